//! palaver's load generator: real release binaries, a real `redis-server`,
//! thousands of real WebSocket clients.
//!
//! ```sh
//! cargo bench --bench loadgen -- idle --sockets 10000
//! cargo bench --bench loadgen -- chat --sockets 1000 --rates 100,200,400 --seconds 10
//! cargo bench --bench bare --bench loadgen -- handshakes --server palaver,node,bare
//! ```
//!
//! `--server palaver|node|bare` (or a comma-separated list, run in turn)
//! chooses what is measured, where a scenario makes sense for it: palaver
//! (the release binary), the Node peer (`benches/peers/node`: express,
//! express-session, connect-redis, ws; `npm ci` is run there once if
//! `node_modules` is missing) or the bare ceiling (`benches/bare.rs`, no
//! authentication; built by `cargo bench --bench bare`, found next to this
//! binary in `target/release/deps`, refused when `benches/bare.rs` is newer).
//!
//! `idle`: opens `--sockets` authenticated sockets that only answer pings,
//! and reports the servers' resident memory per socket. `--instances K`
//! runs K servers on one Redis; `--clients P` spreads the sockets over P
//! child processes of this binary (each under the open-file limit).
//!
//! `login`: the cost of a login: Argon2id verification alone (in this
//! process, release build, the same parameters as the server), then whole
//! `POST /login` round trips against a release instance.
//!
//! `replay`: `--sockets` sockets open a room of `--messages` messages with
//! `after=0-0` and never read; reports server RSS before, at the peak, and
//! after they closed, and checks that a reading client gets the whole room
//! in order before and after.
//!
//! `handshakes`: authenticated upgrades per second with `--concurrency`
//! clients, each opening a socket, reading its `hello` and closing, for
//! `--seconds`: palaver with the session cookie, then with an access token
//! (`Authorization: Bearer`); the Node peer with its session cookie; the
//! bare server with nothing. Every handshake must get its `hello` with the
//! right user and room. `--room-kind public,private` (palaver; either, or
//! both in turn) sends palaver's into a public room other than the lobby
//! and into a private room the user owns, instead of the default room, and
//! with both prints the private rates as a share of the public ones.
//!
//! `fanout`: the standard fan-out table, `--rows` (default
//! `2000x50,2000x200,1000x400`: sockets in one room × messages per second)
//! on one instance each, `--users` 20 (so a room of 2,000 holds 100 sockets
//! per session) and one sender, for every `--server` in turn; the same
//! checks as `chat`. Fails when palaver delivers under 90 % of the bare
//! server's deliveries per second or its p99 is above 1.5 times the bare
//! server's (`--report-only`: says so and goes on).
//!
//! `churn`: `--clients` users (32) each reconnecting again and again into
//! one room for `--seconds`: palaver's public room with presence on, with a
//! cookie and then with an access token; the peers into their room; every
//! `hello` checked. Prints palaver's rates as shares of the bare server's.
//!
//! `chat`: two instances on one Redis (`--instances`; the bare server: one
//! process);
//! `--sockets` sockets in one room, split across the instances; `--senders`
//! of them send at each total rate in turn. Reports messages delivered per
//! second and delivery latency (send to receipt, over every recipient) at
//! p50/p99/max, and checks that every receiver's sequence of ids equals the
//! acked ids in the room's order and that no socket was closed; also the
//! senders' ack latency (send to ack). `--cluster` (palaver) runs on a
//! six-node Redis Cluster (three masters, three replicas, `redis-cli
//! --cluster create`); `--wait-replicas N` sets `REDIS_WAIT_REPLICAS`.
//!
//! `logout`: two instances A and B on one Redis; `--sockets` idle sockets on
//! B (`--same-room`: all in the victim's room; otherwise spread over 100
//! other rooms); `--repeat` times, a fresh victim session opens one socket
//! on B and `POST /logout` is sent to A: the time from sending it to the
//! victim's close, which must be 4401 `logged out`; no other socket may close.
//!
//! `revoke` (palaver): the same stage, in a private room: the owner creates
//! it on A and adds the `--users` idle users and the victims (raising
//! `MAX_ROOM_MEMBERS` when they are more than its default); `--sockets`
//! idle sockets on B are all in it; `--repeat` times, a fresh victim opens
//! one socket on B and the owner's `DELETE /api/rooms/vault/members/victimK`
//! goes to A: the time from sending it to the victim's close, which must be
//! 4403 `access revoked`; no other socket may close, and every one must
//! get a message said on A after the removals.
//!
//! `presence-storm` (palaver): `--sockets` sockets of as many users join one
//! room, evenly over `--seconds`; each keeps its view of the room from
//! `presence` (replaces it) and `presence_diff` (applies to it) frames.
//! Reports how long after the last join each view showed everyone, and
//! fails if a view never does or a socket is closed.
//!
//! `login-storm` (palaver): `--sockets` sockets in one room on two instances
//! chat at `--rate` msg/s for `--seconds` (the baseline), then as long again
//! while `--logins` clients log in back to back with the right password
//! (real Argon2; `--once`: one login each at the start of the period);
//! reports the delivery p99 of both periods and their ratio, and checks
//! that nothing was lost.
//!
//! `chaos` (palaver): three instances on a six-node Redis Cluster (`--store
//! cluster`) or on one Redis with an append-only file (`--store single`),
//! `--clients` clients of `--users` users (cookie and token, chatting in
//! public and private rooms, signing in and out, refreshing, adding and
//! removing members, reconnecting with `after`) and faults drawn from
//! `--seed` (instances killed and stopped, Redis masters killed, subscribers
//! cut, the single Redis restarted): a `--warm-up` round (s), the baseline
//! memory and open files, then `--minutes` of the same. A checker reads the
//! clients' records and the rooms' histories and fails the run with the
//! first broken promise and the command that reproduces the run's choices;
//! the summary has the faults by kind, the messages checked, and each
//! instance's memory and open files after the warm-up, at the peak and
//! `--settle` s after the load. `scripts/test` runs two minutes of it in the
//! test profile.
//!
//! `storm` (palaver): a restarted instance's reconnect storm. Two instances
//! A and B on one Redis; `--sockets` sockets (15,000) of `--users` users
//! (150) in as many rooms on A, `--survivors` (200) chatting on B at
//! `--rate` (50) msg/s for `--seconds` (60). A is killed and started again
//! on its port; its clients reconnect with `after`, honour a 503's
//! `Retry-After` with jitter of their own and back off on failed
//! connects. Reports the time until 99 % and 100 % are back, upgrade
//! latency, 503s and failed connects, the survivors' delivery p99 and
//! Redis's ops/s, before and during; checks that every client is back
//! with every message of its room exactly once, in order.
//! `--no-admission` lifts `MAX_PENDING_UPGRADES` to compare.
//!
//! Layout: one module per scenario family (`idle`, `login`, `replay`,
//! `handshakes`, `chat`, `revocation`, `presence`, `chaos`, `storm`) over a shared harness:
//! `servers` (the processes: Redis, palaver, the peers), `http` (raw HTTP:
//! registering, signing in, tokens, the room API), `sockets` (opening,
//! reading and holding WebSockets), `stats` (clocks, percentiles) and
//! `args` (the command line).

mod args;
mod chaos;
mod chat;
mod handshakes;
mod http;
mod idle;
mod login;
mod presence;
mod replay;
mod revocation;
mod servers;
mod sockets;
mod stats;
mod storm;

use crate::{
    chaos::chaos,
    chat::{chat, fanout},
    handshakes::{churn, handshakes},
    idle::{idle, idle_client},
    login::{login_storm, logins},
    presence::presence_storm,
    replay::replay,
    revocation::{logout, revoke},
    servers::{raise_fd_limit, servers},
    storm::storm,
};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let command = args.first().map(String::as_str).unwrap_or_default();
    raise_fd_limit(command == "idle-client");
    match command {
        "login" => logins(&args).await,
        "replay" => replay(&args).await,
        "handshakes" => handshakes(&args).await,
        "fanout" => fanout(&args).await,
        "churn" => churn(&args).await,
        "chaos" => chaos(&args).await,
        "storm" => storm(&args).await,
        "idle-client" => idle_client(&args).await,
        "idle" | "chat" | "logout" | "revoke" | "presence-storm" | "login-storm" => {
            for kind in servers(&args) {
                match command {
                    "idle" => idle(kind, &args).await,
                    "chat" => chat(kind, &args).await,
                    "logout" => logout(kind, &args).await,
                    "revoke" => revoke(kind, &args).await,
                    "presence-storm" => presence_storm(kind, &args).await,
                    _ => login_storm(kind, &args).await,
                }
            }
        }
        _ => eprintln!(
            "usage: cargo bench --bench loadgen -- \
             idle|chat|fanout|login|replay|handshakes|churn|logout|revoke|presence-storm|login-storm|chaos|storm \
             [--server palaver,node,bare] [--sockets N] [--instances K] [--clients P] [--rates a,b] [--seconds S] \
             [--count N] [--messages N] [--body N] [--concurrency N] [--room-kind public,private] [--same-room] \
             [--users N] [--repeat N] [--gap-ms N] [--logins N] [--rate R] [--cluster] [--wait-replicas N] \
             [--rows SOCKETSxRATE,…] [--report-only] [--store cluster|single] [--seed S] [--minutes M] \
             [--warm-up S] [--settle S] [--survivors N] [--trickle R] [--no-admission]\n\
             (the bare server: cargo bench --bench bare --bench loadgen -- …)"
        ),
    }
}
