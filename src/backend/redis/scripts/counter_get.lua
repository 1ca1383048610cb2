-- KEYS[1] counter; returns {value, pttl}
return {tonumber(redis.call('GET', KEYS[1]) or '0'), redis.call('PTTL', KEYS[1])}
