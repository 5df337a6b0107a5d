//! Text a client or a peer chose, made safe to write into the log.
//!
//! Log lines are one per event: a newline (or any control character) inside a field would let
//! whoever chose the text forge lines. Every peer- or client-supplied value that reaches the log
//! goes through [`Escaped`].

use std::fmt::{self, Display, Write};

/// Displays its value with control characters escaped (`\n`, `\u{1b}`, ...).
pub struct Escaped<T>(pub T);

impl<T: Display> Display for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.to_string().chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_start_a_line() {
        let forged = "bob@x\n2026-01-01 INFO forged\u{1b}[31m";
        let logged = Escaped(forged).to_string();
        assert!(!logged.chars().any(char::is_control), "{logged}");
        assert_eq!(logged, "bob@x\\n2026-01-01 INFO forged\\u{1b}[31m");
    }
}
