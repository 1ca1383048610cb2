//! JSON that may hold a token (the credentials file, the token API's
//! answers, frames): its errors say where, never what.

/// A JSON error without the text it was reading: a line and a column, never
/// a fragment of a token.
pub fn describe(e: &serde_json::Error) -> String {
    let kind = match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Data => "JSON of the wrong shape",
        serde_json::error::Category::Eof => "cut short",
    };
    format!("{kind} at line {} column {}", e.line(), e.column())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_where_and_never_quote_the_text() {
        let e = serde_json::from_str::<u64>(r#""AT-secret""#).unwrap_err();
        assert_eq!(describe(&e), "JSON of the wrong shape at line 1 column 11");
        let e = serde_json::from_str::<serde_json::Value>(r#"{"token":"RT-secret"#).unwrap_err();
        assert_eq!(describe(&e), "cut short at line 1 column 19");
    }
}
