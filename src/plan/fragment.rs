//! Checks on the places where resources hold SQL by design (`source.sql`, `filter`).
//!
//! Those texts are wrapped as a parenthesised sub-query or predicate. The check makes
//! sure they stay inside that wrapping: balanced parentheses, one statement, no
//! comment that would swallow the SQL Tally writes after them.

/// Why a SQL fragment cannot be embedded.
pub fn check_fragment(text: &str) -> Result<(), &'static str> {
    if text.trim().is_empty() {
        return Err("is empty");
    }
    let mut depth: i64 = 0;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                // Quoted text or identifier; a doubled quote is an escaped quote.
                loop {
                    match chars.next() {
                        Some(q) if q == c => {
                            if chars.peek() == Some(&c) {
                                chars.next();
                            } else {
                                break;
                            }
                        }
                        Some(_) => {}
                        None => return Err("has an unterminated quote"),
                    }
                }
            }
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err("closes a parenthesis it did not open");
                }
            }
            ';' => return Err("must be a single statement or expression (no ';')"),
            '-' if chars.peek() == Some(&'-') => return Err("must not contain comments (--)"),
            '/' if chars.peek() == Some(&'*') => return Err("must not contain comments (/*)"),
            _ => {}
        }
    }
    if depth != 0 {
        return Err("has unbalanced parentheses");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_fragment;

    #[test]
    fn accepts_ordinary_sql() {
        for ok in [
            "items >= 3",
            "country IN ('SE', 'NO') AND (amount > 0 OR refund)",
            "SELECT * FROM t WHERE name = 'it''s; fine -- really'",
            "\"odd;name\" = 1",
            "a - -1 > 0",
        ] {
            assert_eq!(check_fragment(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rejects_text_that_escapes_its_wrapping() {
        for bad in [
            "1=1) UNION SELECT * FROM secrets (",
            "amount > 0; DROP TABLE x",
            "amount > 0 --",
            "amount /* x */ > 0",
            "(amount > 0",
            "name = 'open",
            "  ",
        ] {
            assert!(check_fragment(bad).is_err(), "{bad}");
        }
    }
}
