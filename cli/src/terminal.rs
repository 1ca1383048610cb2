//! Text from the server and from other people, made safe to print.

/// Control characters (escape sequences, carriage returns, newlines) and
/// the bidirectional overrides are shown escaped, so one message is one
/// line and cannot redraw the screen or reorder what follows it.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control()
                || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') =>
            {
                out.push_str(&c.escape_unicode().to_string())
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_a_terminal_would_obey_is_printed_as_is() {
        assert_eq!(printable("two\nlines\r\u{1b}[2Jgone\u{202e}"), "two\\nlines\\u{d}\\u{1b}[2Jgone\\u{202e}");
        assert_eq!(printable("tab\there ünïcode ✓"), "tab\\there ünïcode ✓");
    }
}
