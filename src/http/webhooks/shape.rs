//! What a webhook body must be for processing to read and storage to keep it, checked in one
//! pass over the bytes before anything is parsed: JSON nested at most [`MAX_DEPTH`] deep (the
//! JSON reader's own limit, beyond which processing would fail for good) and no NUL, raw or
//! escaped as `\u0000` (no text column of PostgreSQL stores one).

/// The deepest nesting of objects and arrays a body may have.
pub const MAX_DEPTH: usize = 128;

pub fn check(body: &[u8]) -> Result<(), String> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        if b == 0 {
            return Err("the webhook body holds a NUL character".into());
        }
        if in_string {
            match b {
                b'\\' => {
                    if body.get(i + 1) == Some(&b'u')
                        && body
                            .get(i + 2..i + 6)
                            .is_some_and(|hex| hex.iter().all(|h| *h == b'0'))
                    {
                        return Err("the webhook body holds a NUL character (\\u0000)".into());
                    }
                    // Skip the escaped character, whatever it is.
                    i += 1;
                }
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b'{' | b'[' => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Err(format!(
                            "the webhook body is nested deeper than {MAX_DEPTH} levels"
                        ));
                    }
                }
                b'}' | b']' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_is_counted_outside_strings_only() {
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(check(deep.as_bytes()).is_ok());
        let deeper = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(check(deeper.as_bytes()).unwrap_err().contains("deeper"));
        let in_string = format!("{{\"a\": \"{}\"}}", "[".repeat(500));
        assert!(check(in_string.as_bytes()).is_ok());
    }

    #[test]
    fn a_nul_is_refused_raw_or_escaped_but_not_an_escaped_backslash() {
        assert!(check(b"{\"id\": \"evt\\u0000x\"}").is_err());
        assert!(check(b"{\"id\": \"evt\x00\"}").is_err());
        assert!(check(b"{\"id\": \"evt\\\\u0000\"}").is_ok());
        assert!(check(b"{\"id\": \"evt\\u00e9\"}").is_ok());
    }
}
