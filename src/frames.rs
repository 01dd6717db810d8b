//! Following WebSocket framing (RFC 6455 §5) as bytes pass, without buffering, unmasking
//! or altering them: one small state machine per direction of a tunnel.
//!
//! It reads each frame header (FIN, opcode, mask bit, length) across whatever read
//! boundaries the bytes arrive in, skips payloads by counting, and keeps the two bytes of
//! a Close frame's status code (unmasked with the frame's key). It counts data messages
//! (text and binary; a fragmented message counts once, when its last fragment ends) and
//! notes the first Close. A stream that breaks the framing rules (an unknown opcode, a
//! fragmented or oversized control frame, a continuation with nothing to continue, the
//! wrong masking for the direction) is marked broken and no longer followed: the tunnel
//! relays it as it is.
//!
//! A read that holds whole single-frame messages from a frame boundary on (the usual case
//! for small messages) is taken in one step per frame, without the state machine: it is
//! what most reads are, and the tunnel pays for the tracking on every one of them.
//!
//! The state is a few bytes: a tunnel keeps two of these for its life.

/// Which peer sends the bytes a tracker follows: a client masks every frame (RFC 6455
/// §5.3), a server none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    Client,
    Server,
}

/// One direction's framing state.
#[derive(Debug, Clone)]
pub struct Frames {
    sender: Sender,
    state: State,
    /// The header being read: at most 2 + 8 + 4 bytes.
    header: [u8; 14],
    have: u8,
    /// Payload bytes left in the current frame.
    remaining: u64,
    /// The current frame's opcode and FIN, once its header is read.
    opcode: u8,
    fin: bool,
    /// A data message is open (its last fragment has not come yet).
    in_message: bool,
    /// For a Close frame: the mask key, and how many of the code's two bytes are read.
    mask: [u8; 4],
    close_read: u8,
    close_code: [u8; 2],
    /// Data messages completed.
    messages: u64,
    /// The first Close frame's code: `Some(None)` for a Close without one.
    close: Option<Option<u16>>,
    /// `max_message_bytes` (`u64::MAX`: none), and the length of the message under way.
    limit: u64,
    message_len: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    Payload,
    Broken,
    /// A frame would make its message longer than the limit: nothing from it on is
    /// followed, and the stream is cut where its header starts (a frame boundary).
    Over,
}

impl Frames {
    pub fn new(sender: Sender) -> Frames {
        Frames {
            sender,
            state: State::Header,
            header: [0; 14],
            have: 0,
            remaining: 0,
            opcode: 0,
            fin: false,
            in_message: false,
            mask: [0; 4],
            close_read: 0,
            close_code: [0; 2],
            messages: 0,
            close: None,
            limit: u64::MAX,
            message_len: 0,
        }
    }

    /// Follows with `max_message_bytes`: see [`Frames::feed_limited`].
    pub fn with_limit(mut self, limit: Option<u64>) -> Frames {
        self.limit = limit.unwrap_or(u64::MAX);
        self
    }

    /// Whether a message went over the limit.
    pub fn is_over(&self) -> bool {
        self.state == State::Over
    }

    /// Follows `data` and returns how much of it may be passed on: all of it, unless a
    /// frame in it makes its message longer than the limit; then the bytes before that
    /// frame's header. (A header split over two reads has its first bytes passed on with
    /// the first.)
    #[inline]
    pub fn feed_limited(&mut self, data: &[u8]) -> usize {
        let rest = self.skip_messages(data);
        if rest.is_empty() {
            return data.len();
        }
        if self.limit == u64::MAX {
            self.feed_slow(rest);
            return data.len();
        }
        // The whole messages skipped were within the limit, and are passed on.
        data.len() - rest.len() + self.feed_limited_slow(rest)
    }

    /// [`Frames::feed_limited`] a step at a time (a header, or a payload up to its frame's
    /// end), so that the frame crossing the limit is known where its header starts.
    #[cold]
    fn feed_limited_slow(&mut self, data: &[u8]) -> usize {
        let mut passed = 0;
        // Where the frame whose header is being read starts in `data` (0: in an earlier read).
        let mut frame_start = 0;
        while passed < data.len() && !self.is_over() && !self.is_broken() {
            let start = passed;
            if self.state == State::Header && self.have == 0 {
                frame_start = start;
            }
            let step = match self.state {
                State::Payload => {
                    let left = data.len() - passed;
                    if self.remaining < left as u64 {
                        self.remaining as usize
                    } else {
                        left
                    }
                }
                _ => usize::from(self.header_len() - self.have).min(data.len() - passed),
            };
            self.feed_slow(&data[start..start + step]);
            passed += step;
            if self.is_over() {
                return frame_start;
            }
        }
        if self.is_over() {
            0
        } else {
            data.len()
        }
    }

    /// Data messages completed so far.
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// The first Close frame seen: its status code, or `Some(None)` when it carried none.
    pub fn close(&self) -> Option<Option<u16>> {
        self.close
    }

    /// Whether the bytes broke the framing rules (and are no longer followed).
    pub fn is_broken(&self) -> bool {
        self.state == State::Broken
    }

    /// Whether the next byte starts a frame: where sluice may speak for itself.
    pub fn at_boundary(&self) -> bool {
        self.state == State::Header && self.have == 0
    }

    /// Follows `data` only up to the end of the frame under way: how many of its bytes
    /// that is (all of them if the frame does not end in them). At a boundary already, or
    /// on a broken stream, it takes nothing.
    pub fn feed_to_boundary(&mut self, data: &[u8]) -> usize {
        if self.at_boundary() || self.is_broken() {
            return 0;
        }
        let mut taken = 0;
        // Header bytes one at a time (a header is at most 14), then the payload at once.
        while taken < data.len() && !self.at_boundary() && !self.is_broken() {
            let step = match self.state {
                State::Payload => {
                    let left = data.len() - taken;
                    if self.remaining < left as u64 {
                        self.remaining as usize
                    } else {
                        left
                    }
                }
                _ => 1,
            };
            self.feed_slow(&data[taken..taken + step]);
            taken += step;
        }
        taken
    }

    /// Follows `data`, the next bytes of the stream.
    #[inline]
    pub fn feed(&mut self, data: &[u8]) {
        let rest = self.skip_messages(data);
        if !rest.is_empty() {
            self.feed_slow(rest);
        }
    }

    /// The common case in one step: at a frame boundary outside a fragmented message,
    /// a FIN text or binary frame whose header and payload both lie in `data` is a whole
    /// message. Each such frame at the start of `data` is counted and skipped, without
    /// the header copy and per-frame state of [`Frames::feed_slow`]; what follows the
    /// last of them (anything else, or a frame not ending in `data`) is returned for it.
    ///
    /// It only ever takes frames the slow path would take the same way: valid for the
    /// direction's masking, no longer than the limit, with a 7- or 16-bit length (a
    /// 64-bit one goes the slow way). The fields it leaves alone (`opcode`, `fin`,
    /// `remaining`, `message_len`, the Close key) are only read once a header sets them.
    #[inline]
    fn skip_messages<'a>(&mut self, mut data: &'a [u8]) -> &'a [u8] {
        if self.state != State::Header || self.have != 0 || self.in_message {
            return data;
        }
        let mask_bit = match self.sender {
            Sender::Client => 0x80,
            Sender::Server => 0,
        };
        while let [first, second, ..] = *data {
            // FIN with TEXT or BINARY (the reserved bits are not looked at, as in
            // `header_done`), masked as the direction requires.
            if !matches!(first & 0x8f, 0x81 | 0x82) || second & 0x80 != mask_bit {
                break;
            }
            let (len, at) = match second & 0x7f {
                126 => match *data {
                    [_, _, high, low, ..] => (u64::from(u16::from_be_bytes([high, low])), 4),
                    _ => break,
                },
                127 => break,
                short => (u64::from(short), 2),
            };
            if len > self.limit {
                break;
            }
            // The payload starts after the mask key, if any; `len` is at most 0xffff.
            let end = at + usize::from(mask_bit >> 5) + len as usize;
            match data.get(end..) {
                Some(rest) => data = rest,
                None => break,
            }
            self.messages += 1;
        }
        data
    }

    /// Follows `data` through the state machine: everything [`Frames::skip_messages`]
    /// leaves (headers split over reads, payloads that do not end in this read, fragments,
    /// control frames, 64-bit lengths, a stream that breaks the rules).
    fn feed_slow(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
                State::Broken | State::Over => return,
                State::Payload => {
                    let n = if self.remaining < data.len() as u64 {
                        // Less than `data.len()`, so it fits.
                        self.remaining as usize
                    } else {
                        data.len()
                    };
                    let (payload, rest) = data.split_at(n);
                    if self.opcode == OP_CLOSE && self.close_read < 2 {
                        self.read_close_code(payload);
                    }
                    self.remaining -= n as u64;
                    data = rest;
                    if self.remaining == 0 {
                        self.frame_done();
                    }
                }
                State::Header => {
                    // The usual case: a whole header at the start of the bytes, read in place.
                    if self.have == 0 && data.len() >= 2 {
                        let len = usize::from(header_len(data[1]));
                        if let Some(header) = data.get(..len) {
                            self.header_done(header);
                            data = &data[len..];
                            continue;
                        }
                    }
                    let need = self.header_len();
                    let take = usize::from(need - self.have).min(data.len());
                    let at = usize::from(self.have);
                    self.header[at..at + take].copy_from_slice(&data[..take]);
                    self.have += take as u8;
                    data = &data[take..];
                    if self.have == self.header_len() {
                        let header = self.header;
                        self.header_done(&header[..usize::from(self.have)]);
                    }
                }
            }
        }
    }

    /// How long the header being read is, as far as its bytes so far tell.
    fn header_len(&self) -> u8 {
        if self.have < 2 {
            return 2;
        }
        header_len(self.header[1])
    }

    /// The first bytes of a Close frame's payload: its status code, masked as it came.
    fn read_close_code(&mut self, payload: &[u8]) {
        for &byte in payload {
            if self.close_read >= 2 {
                break;
            }
            let at = usize::from(self.close_read);
            self.close_code[at] = byte ^ self.mask[at];
            self.close_read += 1;
        }
    }

    /// Takes a complete frame header, exactly [`header_len`] bytes.
    #[inline]
    fn header_done(&mut self, header: &[u8]) {
        let first = header[0];
        let fin = first & 0x80 != 0;
        let opcode = first & 0x0f;
        let masked = header[1] & 0x80 != 0;
        let (len, key_at) = match header[1] & 0x7f {
            126 => (u64::from(u16::from_be_bytes([header[2], header[3]])), 4),
            127 => {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&header[2..10]);
                (u64::from_be_bytes(bytes), 10)
            }
            short => (u64::from(short), 2),
        };
        let control = opcode & 0x08 != 0;
        let valid = match opcode {
            OP_CONTINUATION => self.in_message,
            OP_TEXT | OP_BINARY => !self.in_message,
            OP_CLOSE | OP_PING | OP_PONG => fin && len <= 125,
            _ => false,
        } && masked == (self.sender == Sender::Client)
            && (len >> 63) == 0;
        if !valid {
            self.state = State::Broken;
            return;
        }
        if !control && self.limit != u64::MAX {
            let before = if opcode == OP_CONTINUATION {
                self.message_len
            } else {
                0
            };
            let total = before.saturating_add(len);
            if total > self.limit {
                self.state = State::Over;
                return;
            }
            self.message_len = total;
        }
        // The key matters only for a Close frame's code: the one payload read.
        if opcode == OP_CLOSE {
            self.mask = [0; 4];
            if masked {
                self.mask.copy_from_slice(&header[key_at..key_at + 4]);
            }
        }
        self.opcode = opcode;
        self.fin = fin;
        if !control {
            self.in_message = true;
        }
        self.close_read = 0;
        self.remaining = len;
        self.have = 0;
        self.state = State::Payload;
        if len == 0 {
            self.frame_done();
        }
    }

    fn frame_done(&mut self) {
        match self.opcode {
            OP_CLOSE => {
                if self.close.is_none() {
                    self.close =
                        Some((self.close_read >= 2).then(|| u16::from_be_bytes(self.close_code)));
                }
            }
            OP_PING | OP_PONG => {}
            _ => {
                if self.fin {
                    self.in_message = false;
                    self.messages += 1;
                }
            }
        }
        self.state = State::Header;
        self.have = 0;
    }
}

/// A frame header's length from its second byte: 2, plus 2 or 8 for an extended length,
/// plus 4 for a mask key.
fn header_len(second: u8) -> u8 {
    let extended = match second & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + extended + if second & 0x80 != 0 { 4 } else { 0 }
}

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xa;

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        let bit = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(bit | n as u8),
            n if n <= 0xffff => {
                out.push(bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(bit | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        match mask {
            Some(key) => {
                out.extend_from_slice(&key);
                out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            }
            None => out.extend_from_slice(payload),
        }
        out
    }

    #[test]
    fn counts_messages_across_any_split_and_reads_the_close_code() {
        let key = Some([1, 2, 3, 4]);
        let mut stream = Vec::new();
        stream.extend(frame(true, OP_TEXT, b"hello", key));
        stream.extend(frame(false, OP_BINARY, &[7; 300], key));
        stream.extend(frame(true, OP_PING, b"p", key));
        stream.extend(frame(true, OP_CONTINUATION, &[8; 70_000], key));
        stream.extend(frame(true, OP_CLOSE, &1001u16.to_be_bytes(), key));
        for step in [1, 2, 3, 7, 64, 4096, stream.len()] {
            let mut frames = Frames::new(Sender::Client);
            for chunk in stream.chunks(step) {
                frames.feed(chunk);
            }
            assert_eq!(frames.messages(), 2, "split every {step}");
            assert_eq!(frames.close(), Some(Some(1001)), "split every {step}");
            assert!(!frames.is_broken());
            assert!(frames.at_boundary());
        }
    }

    #[test]
    fn feeding_to_the_boundary_stops_where_the_frame_ends() {
        let key = Some([9, 8, 7, 6]);
        let first = frame(true, OP_BINARY, &[1; 300], key);
        let second = frame(true, OP_TEXT, b"next", key);
        let mut stream = first.clone();
        stream.extend(&second);
        let mut frames = Frames::new(Sender::Client);
        frames.feed(&stream[..10]);
        assert!(!frames.at_boundary());
        assert_eq!(frames.feed_to_boundary(&stream[10..]), first.len() - 10);
        assert!(frames.at_boundary());
        assert_eq!(frames.messages(), 1);
        assert_eq!(
            frames.feed_to_boundary(&second),
            0,
            "at a boundary, nothing is taken"
        );
    }

    #[test]
    fn a_message_over_the_limit_is_cut_where_its_crossing_frame_starts() {
        let key = Some([5, 6, 7, 8]);
        let small = frame(true, OP_TEXT, &[b'a'; 10], key);
        let part = frame(false, OP_BINARY, &[1; 60], key);
        let crossing = frame(true, OP_CONTINUATION, &[2; 60], key);
        let mut stream = small.clone();
        stream.extend(&part);
        stream.extend(&crossing);
        for step in [1, 3, 7, 50, stream.len()] {
            let mut frames = Frames::new(Sender::Client).with_limit(Some(100));
            let mut passed = 0;
            for chunk in stream.chunks(step) {
                let n = frames.feed_limited(chunk);
                passed += n;
                if frames.is_over() {
                    break;
                }
                assert_eq!(n, chunk.len());
            }
            assert!(frames.is_over(), "split every {step}");
            // Everything before the crossing frame's header passed; nothing of it did
            // (a header split over reads may have its first bytes through).
            let cut = small.len() + part.len();
            assert!(
                cut <= passed && passed < cut + 14,
                "split every {step}: {passed}"
            );
            if step >= 50 {
                assert_eq!(passed, cut);
            }
            assert_eq!(frames.messages(), 1);
        }
    }

    #[test]
    fn a_stream_that_is_not_websocket_is_marked_broken() {
        let mut frames = Frames::new(Sender::Server);
        frames.feed(b"HTTP/1.1 200 OK\r\n\r\n");
        assert!(frames.is_broken());
        // A client's frame must be masked.
        let mut frames = Frames::new(Sender::Client);
        frames.feed(&frame(true, OP_TEXT, b"x", None));
        assert!(frames.is_broken());
        // A continuation with nothing to continue.
        let mut frames = Frames::new(Sender::Server);
        frames.feed(&frame(true, OP_CONTINUATION, b"x", None));
        assert!(frames.is_broken());
        // A close without a code.
        let mut frames = Frames::new(Sender::Server);
        frames.feed(&frame(true, OP_CLOSE, b"", None));
        assert_eq!(frames.close(), Some(None));
    }

    /// What byte-by-byte feeding (never the one-step path) makes of `stream`.
    fn one_byte_at_a_time(sender: Sender, stream: &[u8]) -> Frames {
        let mut frames = Frames::new(sender);
        for byte in stream.chunks(1) {
            frames.feed(byte);
        }
        frames
    }

    fn same(a: &Frames, b: &Frames, what: &str) {
        assert_eq!(a.messages(), b.messages(), "{what}");
        assert_eq!(a.close(), b.close(), "{what}");
        assert_eq!(a.is_broken(), b.is_broken(), "{what}");
        assert_eq!(a.at_boundary(), b.at_boundary(), "{what}");
    }

    #[test]
    fn whole_frames_in_one_read_agree_with_the_state_machine_at_every_split() {
        for (sender, key) in [(Sender::Client, Some([3, 1, 4, 1])), (Sender::Server, None)] {
            let mut stream = Vec::new();
            stream.extend(frame(true, OP_BINARY, &[1; 64], key));
            stream.extend(frame(true, OP_TEXT, b"", key));
            stream.extend(frame(true, OP_TEXT, &[b'a'; 125], key));
            stream.extend(frame(true, OP_BINARY, &[2; 126], key));
            stream.extend(frame(true, OP_BINARY, &[3; 4096], key));
            stream.extend(frame(false, OP_TEXT, b"frag", key));
            stream.extend(frame(true, OP_PONG, b"", key));
            stream.extend(frame(true, OP_CONTINUATION, b"ment", key));
            stream.extend(frame(true, OP_BINARY, &[4; 70_000], key));
            stream.extend(frame(true, OP_TEXT, b"last", key));
            stream.extend(frame(true, OP_CLOSE, &1000u16.to_be_bytes(), key));
            let want = one_byte_at_a_time(sender, &stream);
            assert_eq!(want.messages(), 8);
            assert_eq!(want.close(), Some(Some(1000)));
            // Two reads, split at every point (a header split at each of its bytes among them).
            for cut in 0..=stream.len() {
                let mut frames = Frames::new(sender);
                frames.feed(&stream[..cut]);
                frames.feed(&stream[cut..]);
                same(&frames, &want, &format!("{sender:?} cut at {cut}"));
            }
        }
    }

    #[test]
    fn a_header_and_payload_exactly_filling_a_read_end_at_a_boundary() {
        let key = Some([7, 7, 7, 7]);
        let short = frame(true, OP_BINARY, &[1; 64], key);
        let medium = frame(true, OP_TEXT, &[b'b'; 300], key);
        let mut frames = Frames::new(Sender::Client);
        frames.feed(&short);
        assert!(frames.at_boundary());
        assert_eq!(frames.messages(), 1);
        frames.feed(&medium);
        assert!(frames.at_boundary());
        assert_eq!(frames.messages(), 2);
        // One byte short: the frame is left to the state machine, and ends with its last byte.
        frames.feed(&short[..short.len() - 1]);
        assert!(!frames.at_boundary());
        assert_eq!(frames.messages(), 2);
        frames.feed(&short[short.len() - 1..]);
        assert!(frames.at_boundary());
        assert_eq!(frames.messages(), 3);
    }

    #[test]
    fn each_header_split_at_each_byte_reads_the_same() {
        let key = Some([9, 9, 9, 9]);
        for (sender, key) in [(Sender::Client, key), (Sender::Server, None)] {
            for len in [0, 5, 125, 126, 1000, 65_535, 65_536] {
                let whole = frame(true, OP_TEXT, &vec![b'x'; len], key);
                let header = whole.len() - len;
                for cut in 1..header {
                    let mut frames = Frames::new(sender);
                    frames.feed(&whole[..cut]);
                    assert!(!frames.at_boundary());
                    frames.feed(&whole[cut..]);
                    assert!(frames.at_boundary(), "{sender:?} {len} cut at {cut}");
                    assert_eq!(frames.messages(), 1, "{sender:?} {len} cut at {cut}");
                }
            }
        }
    }

    #[test]
    fn the_one_step_path_keeps_the_masking_rule_and_the_limit() {
        // Unmasked from a client, masked from a server: broken, as before.
        let mut frames = Frames::new(Sender::Client);
        frames.feed(&frame(true, OP_BINARY, b"x", None));
        assert!(frames.is_broken());
        let mut frames = Frames::new(Sender::Server);
        frames.feed(&frame(true, OP_BINARY, b"x", Some([1, 2, 3, 4])));
        assert!(frames.is_broken());
        // Whole messages before the one over the limit pass; the cut is where it starts.
        let key = Some([1, 2, 3, 4]);
        let at_limit = frame(true, OP_TEXT, &[b'a'; 100], key);
        let over = frame(true, OP_BINARY, &[1; 101], key);
        let mut stream = at_limit.clone();
        stream.extend(&at_limit);
        stream.extend(&over);
        stream.extend(&at_limit);
        let mut frames = Frames::new(Sender::Client).with_limit(Some(100));
        assert_eq!(frames.feed_limited(&stream), 2 * at_limit.len());
        assert!(frames.is_over());
        assert_eq!(frames.messages(), 2);
        assert_eq!(frames.feed_limited(&at_limit), 0);
        // A whole message in a fragment's place is not one: a continuation was due.
        let mut frames = Frames::new(Sender::Client);
        frames.feed(&frame(false, OP_TEXT, b"a", key));
        frames.feed(&frame(true, OP_TEXT, b"b", key));
        assert!(frames.is_broken());
    }
}
