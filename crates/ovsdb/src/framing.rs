//! Splitting the byte stream of a JSON-RPC connection into messages. RFC 7047 messages are JSON
//! objects sent back to back with no delimiter, so the framer tracks nesting depth, strings and
//! escapes to find where each one ends. Unlike a streaming deserializer over the socket, it
//! keeps a partial message across a read timeout, so a slow server never leaves the connection
//! half-parsed; and it bounds a message's size.

/// The largest message accepted: more than a `select` of every port of a very large
/// integration bridge, less than what a runaway peer could make us hold.
pub const MAX_MESSAGE: usize = 64 << 20;

/// Accumulates bytes and yields complete top-level JSON texts.
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
    /// Where scanning resumes in `buf`.
    pos: usize,
    /// Where the current message starts, once its first byte was seen.
    start: Option<usize>,
    depth: usize,
    in_string: bool,
    escaped: bool,
}

/// The peer sent something that is not a sequence of JSON objects or arrays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError(pub String);

impl Framer {
    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received and not yet returned as part of a message.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next complete message, if one has arrived.
    pub fn next_message(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        while self.pos < self.buf.len() {
            let b = self.buf[self.pos];
            let at = self.pos;
            self.pos += 1;
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b' ' | b'\t' | b'\r' | b'\n' if self.depth == 0 => {}
                b'{' | b'[' => {
                    if self.depth == 0 {
                        self.start = Some(at);
                    }
                    self.depth += 1;
                }
                b'}' | b']' => {
                    if self.depth == 0 {
                        return Err(FrameError(format!(
                            "unbalanced {:?} between messages",
                            char::from(b)
                        )));
                    }
                    self.depth -= 1;
                    if self.depth == 0 {
                        let start = self.start.take().unwrap_or(0);
                        let msg = self.buf[start..self.pos].to_vec();
                        self.buf.drain(..self.pos);
                        self.pos = 0;
                        return Ok(Some(msg));
                    }
                }
                b'"' if self.depth > 0 => self.in_string = true,
                _ if self.depth > 0 => {}
                other => {
                    return Err(FrameError(format!(
                        "byte {other:#04x} outside a JSON object"
                    )))
                }
            }
        }
        if self.depth == 0 && self.start.is_none() {
            // Only whitespace so far: drop it.
            self.buf.clear();
            self.pos = 0;
        }
        if self.buf.len() > MAX_MESSAGE {
            return Err(FrameError(format!(
                "a message longer than {MAX_MESSAGE} bytes"
            )));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(f: &mut Framer) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(m) = f.next_message().unwrap() {
            out.push(String::from_utf8(m).unwrap());
        }
        out
    }

    #[test]
    fn back_to_back_messages_are_split() {
        let mut f = Framer::default();
        f.push(br#"{"id":1,"result":[]}{"id":"echo","method":"echo","params":[]}  "#);
        assert_eq!(
            all(&mut f),
            vec![
                r#"{"id":1,"result":[]}"#,
                r#"{"id":"echo","method":"echo","params":[]}"#
            ]
        );
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn a_message_split_anywhere_is_reassembled() {
        let msg = r#"{"id":7,"result":[{"rows":[{"name":"qr-\"}{[","x":"\\"}]}],"error":null}"#;
        for cut in 0..msg.len() {
            let mut f = Framer::default();
            f.push(&msg.as_bytes()[..cut]);
            assert_eq!(f.next_message().unwrap(), None, "cut at {cut}");
            f.push(&msg.as_bytes()[cut..]);
            assert_eq!(all(&mut f), vec![msg.to_owned()], "cut at {cut}");
        }
    }

    #[test]
    fn braces_and_quotes_inside_strings_do_not_count() {
        let mut f = Framer::default();
        f.push(br#"{"a":"}}}\"{{{"}"#);
        assert_eq!(all(&mut f), vec![r#"{"a":"}}}\"{{{"}"#]);
    }

    #[test]
    fn garbage_between_messages_is_an_error() {
        let mut f = Framer::default();
        f.push(b"HTTP/1.1 400\r\n");
        assert!(f.next_message().is_err());
        let mut f = Framer::default();
        f.push(b"{}]");
        assert_eq!(f.next_message().unwrap(), Some(b"{}".to_vec()));
        assert!(f.next_message().is_err());
    }

    #[test]
    fn an_endless_message_is_refused_once_over_the_limit() {
        let mut f = Framer::default();
        f.push(b"{\"a\":\"");
        let chunk = vec![b'x'; 1 << 20];
        let mut refused = false;
        for _ in 0..(MAX_MESSAGE >> 20) + 2 {
            f.push(&chunk);
            if f.next_message().is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused);
    }
}
