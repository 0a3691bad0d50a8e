//! Finding the failing line in `iptables-restore`'s error output, in every format it uses:
//! `iptables-restore: line N failed`, `iptables-nft-restore: line N failed: Bad rule ...`,
//! `line N: CHAIN_DEL failed (Device or resource busy): chain X` and the parse error
//! `Error occurred at line: N`. The text is treated as untrusted: only digits right after a
//! known phrase are read, and a number outside the input is ignored.

/// The 1-based line of `input_lines` that failed, if the message names one.
pub fn failing_line(stderr: &str, input_lines: usize) -> Option<usize> {
    const PHRASES: [&str; 2] = ["Error occurred at line: ", "line "];
    for text_line in stderr.lines() {
        for phrase in PHRASES {
            let mut rest = text_line;
            while let Some(at) = rest.find(phrase) {
                let after = &rest[at + phrase.len()..];
                let digits: &str = &after[..after.bytes().take_while(u8::is_ascii_digit).count()];
                let tail = &after[digits.len()..];
                let shaped = phrase.starts_with("Error")
                    || tail.starts_with(" failed")
                    || tail.starts_with(':');
                if shaped && !digits.is_empty() && digits.len() <= 9 {
                    if let Ok(n) = digits.parse::<usize>() {
                        if (1..=input_lines).contains(&n) {
                            return Some(n);
                        }
                    }
                }
                rest = after;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_formats() {
        assert_eq!(
            failing_line("iptables-restore: line 11 failed\n", 20),
            Some(11)
        );
        assert_eq!(
            failing_line("iptables-nft-restore: line 4 failed: Bad rule (does a matching rule exist in that chain?).", 9),
            Some(4)
        );
        assert_eq!(failing_line("iptables-restore v1.8.9 (legacy): unknown option \"--bogus\"\nError occurred at line: 3\nTry `iptables-restore -h' or 'iptables-restore --help' for more information.", 5), Some(3));
        assert_eq!(
            failing_line(
                "iptables-nft-restore: line 7: CHAIN_DEL failed (Device or resource busy): chain x",
                8
            ),
            Some(7)
        );
    }

    #[test]
    fn untrusted_text() {
        assert_eq!(failing_line("line 99 failed", 5), None);
        assert_eq!(failing_line("line 99999999999999999999 failed", 5), None);
        assert_eq!(
            failing_line("Another app is currently holding the xtables lock", 5),
            None
        );
        assert_eq!(
            failing_line("comment says line 2 is fine; line 3 failed", 5),
            Some(3)
        );
        assert_eq!(failing_line("", 0), None);
    }
}
