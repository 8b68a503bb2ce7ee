//! Checks on the places where resources hold SQL by design (`source.sql`, `filter`),
//! and on whole statements before an engine runs them.
//!
//! Those texts are wrapped as a parenthesised sub-query or predicate. The check makes
//! sure they stay inside that wrapping: balanced parentheses, one statement, no
//! comment that would swallow the SQL Tally writes after them.
//!
//! The scanner follows DuckDB's tokenizer where quoting is concerned: `'…'` strings
//! (a doubled quote is a quote), `"…"` and `` `…` `` identifiers (likewise), `--` and
//! nested `/* */` comments. What it does not follow it refuses rather than guesses:
//! dollar quoting (`$$…$$`, `$tag$…$tag$`, and with it `$1` parameters) and
//! backslashes in escape strings (`E'…'`), whose ends it would otherwise misplace.

/// What the scanner saw outside quoted text.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mark {
    Open,
    Close,
    Semicolon,
    Comment,
    /// Anything else but blanks: a word, a number, an operator, quoted text.
    Code,
}

/// The marks of `text` outside quoted text, or why it cannot be scanned safely.
fn scan(text: &str) -> Result<Vec<Mark>, &'static str> {
    let bytes = text.as_bytes();
    let mut marks = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'\'' => {
                // An `e` or `E` right before the quote may make this an escape string,
                // where a backslash escapes the next character (a quote included).
                // Without backslashes both readings end at the same quote.
                let escape = i > 0 && matches!(bytes[i - 1], b'e' | b'E');
                marks.push(Mark::Code);
                i = quoted_end(bytes, i, b'\'', escape)?;
            }
            b'"' | b'`' => {
                marks.push(Mark::Code);
                i = quoted_end(bytes, i, c, false)?;
            }
            b'$' => {
                return Err(
                    "must not use '$' outside quoted text (dollar-quoted strings and parameters are not supported; quote text as '…')",
                );
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                marks.push(Mark::Comment);
                // To the end of the line (DuckDB ends it at \n or \r).
                i += 2;
                while i < bytes.len() && !matches!(bytes[i], b'\n' | b'\r') {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                marks.push(Mark::Comment);
                // Block comments nest.
                let mut depth = 1;
                i += 2;
                while depth > 0 {
                    match (bytes.get(i), bytes.get(i + 1)) {
                        (Some(b'/'), Some(b'*')) => {
                            depth += 1;
                            i += 2;
                        }
                        (Some(b'*'), Some(b'/')) => {
                            depth -= 1;
                            i += 2;
                        }
                        (Some(_), _) => i += 1,
                        (None, _) => return Err("has an unterminated comment"),
                    }
                }
                continue;
            }
            b'(' => marks.push(Mark::Open),
            b')' => marks.push(Mark::Close),
            b';' => marks.push(Mark::Semicolon),
            c if c.is_ascii_whitespace() => {}
            _ => marks.push(Mark::Code),
        }
        i += 1;
    }
    Ok(marks)
}

/// The index of the quote that closes the quoted text opening at `start`.
fn quoted_end(bytes: &[u8], start: usize, quote: u8, escape: bool) -> Result<usize, &'static str> {
    let mut i = start + 1;
    loop {
        match bytes.get(i) {
            Some(&c) if c == quote => {
                if bytes.get(i + 1) == Some(&quote) {
                    i += 2;
                } else {
                    return Ok(i);
                }
            }
            Some(b'\\') if escape => {
                return Err(
                    "must not use backslash escapes in E'…' strings (write a quote inside a string as '')",
                );
            }
            Some(_) => i += 1,
            None => {
                return Err(if quote == b'\'' {
                    "has an unterminated quote"
                } else {
                    "has an unterminated quoted identifier"
                });
            }
        }
    }
}

/// Why a SQL fragment cannot be embedded.
pub fn check_fragment(text: &str) -> Result<(), &'static str> {
    if text.trim().is_empty() {
        return Err("is empty");
    }
    let mut depth: i64 = 0;
    for mark in scan(text)? {
        match mark {
            Mark::Open => depth += 1,
            Mark::Close => {
                depth -= 1;
                if depth < 0 {
                    return Err("closes a parenthesis it did not open");
                }
            }
            Mark::Semicolon => {
                return Err("must be a single statement or expression (no ';')");
            }
            Mark::Comment => return Err("must not contain comments (-- or /* */)"),
            Mark::Code => {}
        }
    }
    if depth != 0 {
        return Err("has unbalanced parentheses");
    }
    Ok(())
}

/// Why `sql` is not exactly one statement. An engine that would run every statement
/// of a text (DuckDB's prepare runs all but the last) checks this first.
pub fn check_statement(sql: &str) -> Result<(), &'static str> {
    let marks = scan(sql)?;
    let mut statement = false;
    let mut ended = false;
    for mark in marks {
        match mark {
            Mark::Comment => {}
            // One trailing ';' is allowed, then nothing but blanks and comments.
            Mark::Semicolon if !ended => ended = true,
            _ if ended => return Err("holds more than one statement"),
            _ => statement = true,
        }
    }
    if !statement {
        return Err("is empty");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{check_fragment, check_statement};

    #[test]
    fn accepts_ordinary_sql() {
        for ok in [
            "items >= 3",
            "country IN ('SE', 'NO') AND (amount > 0 OR refund)",
            "SELECT * FROM t WHERE name = 'it''s; fine -- really'",
            "\"odd;name\" = 1",
            "`odd;name` = 1",
            "a - -1 > 0",
            "path LIKE 'C:\\%'",
            "name = E'plain' OR name = e'it''s'",
            "price = '$5'",
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
            // DuckDB reads `$$)$$` as a string: the ')' would close the wrapping.
            "'(' = $$($$) OR (amount < 0 OR '' = $$)$$",
            "x = $tag$)$tag$",
            "x = $1",
            // DuckDB ends this string at the third quote; a scanner that reads `\'`
            // as text would think the rest is quoted.
            "name = E'\\'' ) OR (1 = 1 OR '",
            "name = e'a\\\\'",
            // A backtick identifier hides a quote from DuckDB.
            "`'` = 1) OR (1 = 1",
            "name = `open",
            "name = \"open",
            "/* open",
        ] {
            assert!(check_fragment(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refuses_the_dollar_quoted_breakout_of_a_sql_source() {
        let source = "SELECT 1 AS user_id, current_date AS ts, 3 AS variant, $$'$$ AS q)) SELECT 1; COPY (SELECT 42 AS pwned) TO '/tmp/pwned.csv'; WITH exposure_rows AS (SELECT * FROM (SELECT $$'$$ AS q";
        let reason = check_fragment(source).unwrap_err();
        assert!(reason.contains("'$'"), "{reason}");
        // The statement it would have made is refused as a whole, too.
        let statement = format!("WITH e AS (SELECT * FROM ({source}) AS s) SELECT * FROM e");
        assert!(check_statement(&statement).is_err());
    }

    #[test]
    fn a_statement_is_exactly_one() {
        for ok in [
            "SELECT 1",
            "SELECT 1;",
            "SELECT 1;  \n",
            "SELECT 1; -- done",
            "SELECT 1 /* a; b */",
            "SELECT ';' AS x",
            "SELECT 1 AS \";\"",
            "SELECT 1 -- a; b\n",
        ] {
            assert_eq!(check_statement(ok), Ok(()), "{ok}");
        }
        for bad in [
            "SELECT 1; SELECT 2",
            "SELECT 1; COPY (SELECT 42) TO '/tmp/x'; SELECT 3",
            "SELECT 1 -- a\r; SELECT 2",
            "SELECT 1 /* a */; /* b */ SELECT 2",
            "SELECT $$;$$",
            "",
            " ; ",
        ] {
            assert!(check_statement(bad).is_err(), "{bad}");
        }
    }
}
