//! Signal names as runc's `kill` takes them: a number, or a name with or without `SIG`, in any
//! case. Numbers are passed through (real-time signals included), like runc's `parseSignal`.

use super::{Error, Result};

/// Standard signal names and numbers on x86_64 Linux.
const NAMES: &[(&str, i32)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("IOT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("STKFLT", 16),
    ("CHLD", 17),
    ("CLD", 17),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("URG", 23),
    ("XCPU", 24),
    ("XFSZ", 25),
    ("VTALRM", 26),
    ("PROF", 27),
    ("WINCH", 28),
    ("IO", 29),
    ("POLL", 29),
    ("PWR", 30),
    ("SYS", 31),
];

/// Parses a signal as runc does; the result is a raw signal number.
pub fn parse(raw: &str) -> Result<i32> {
    if let Ok(n) = raw.parse::<i32>() {
        // runc passes any integer through; the kernel judges it. Reject only what can never be a
        // signal so the message is ours rather than EINVAL's.
        if (0..=libc::SIGRTMAX()).contains(&n) {
            return Ok(n);
        }
        return Err(Error::UnknownSignal(raw.to_string()));
    }
    let upper = raw.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    NAMES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, num)| *num)
        .ok_or_else(|| Error::UnknownSignal(raw.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_and_without_sig_in_any_case() {
        assert_eq!(parse("SIGTERM").unwrap(), 15);
        assert_eq!(parse("TERM").unwrap(), 15);
        assert_eq!(parse("term").unwrap(), 15);
        assert_eq!(parse("sigkill").unwrap(), 9);
        assert_eq!(parse("KILL").unwrap(), 9);
        assert_eq!(parse("SIGUSR1").unwrap(), 10);
        assert_eq!(parse("hup").unwrap(), 1);
        assert_eq!(parse("SIGWINCH").unwrap(), 28);
    }

    #[test]
    fn numbers_pass_through_including_realtime() {
        assert_eq!(parse("9").unwrap(), 9);
        assert_eq!(parse("0").unwrap(), 0);
        assert_eq!(parse("37").unwrap(), 37);
    }

    #[test]
    fn unknown_is_runc_message() {
        let err = parse("SIGFOO").unwrap_err();
        assert_eq!(err.to_string(), "unknown signal \"SIGFOO\"");
        assert!(parse("-3").is_err());
        assert!(parse("99").is_err());
        assert!(parse("").is_err());
    }
}
