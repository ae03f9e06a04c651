//! How the binary prints an error: once, with each cause the message does not already
//! hold appended after `: `.
//!
//! Library errors often show their cause in their own message and also return it as
//! their `source()` (thiserror's `{source}`), and wrappers add context above both: a
//! plain walk of the chain prints the same text twice. Here a cause is appended only when
//! the text so far does not already contain it.

use std::error::Error;

/// The error and its causes as one message, each text once.
pub fn error_chain(err: &(dyn Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cause = err.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use thiserror::Error;

    #[derive(Debug, Error)]
    #[error("cannot bind {addr}: {source}")]
    struct Bind {
        addr: String,
        source: std::io::Error,
    }

    #[derive(Debug, Error)]
    #[error("cannot start")]
    struct Start(#[source] Bind);

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let bind = Bind {
            addr: "127.0.0.1:24224".into(),
            source: std::io::Error::from_raw_os_error(98),
        };
        assert_eq!(
            error_chain(&Start(bind)),
            "cannot start: cannot bind 127.0.0.1:24224: Address already in use (os error 98)"
        );
    }

    #[test]
    fn a_cause_not_in_the_message_is_appended() {
        let e = Start(Bind {
            addr: "x".into(),
            source: std::io::Error::other("boom"),
        });
        let io = std::io::Error::other(e);
        // io::Error's Display is the inner error's, and its source() is the inner error
        assert_eq!(error_chain(&io), "cannot start: cannot bind x: boom");
    }
}
