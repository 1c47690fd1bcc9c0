//! The attach socket (`attach.sock` in the container's state directory) through which the
//! kubelet hands a container started with `stdin: true` what an attached client types, as
//! conmon's attach socket does. The container's output is not carried here: attach reads it from
//! the CRI log.
//!
//! Each message is a frame: its kind (one byte), the payload's length (two bytes, big endian)
//! and the payload — [`STDIN`] data, a [`RESIZE`] (columns and rows, two bytes each, big endian)
//! or [`CLOSE_STDIN`] (empty), which closes the container's stdin when it is `stdinOnce`.

pub const SOCKET: &str = "attach.sock";

pub const STDIN: u8 = 0;
pub const RESIZE: u8 = 1;
pub const CLOSE_STDIN: u8 = 2;

/// The largest payload of one frame.
pub const MAX_PAYLOAD: usize = u16::MAX as usize;

/// One decoded frame.
#[derive(Debug, PartialEq)]
pub enum Frame {
    Stdin(Vec<u8>),
    Resize { cols: u16, rows: u16 },
    CloseStdin,
}

/// The frames of `data` (at most [`MAX_PAYLOAD`] bytes each).
pub fn encode_stdin(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 3 * (data.len() / MAX_PAYLOAD + 1));
    for piece in data.chunks(MAX_PAYLOAD) {
        out.push(STDIN);
        out.extend_from_slice(&(piece.len() as u16).to_be_bytes());
        out.extend_from_slice(piece);
    }
    out
}

pub fn encode_resize(cols: u16, rows: u16) -> Vec<u8> {
    let mut out = vec![RESIZE, 0, 4];
    out.extend_from_slice(&cols.to_be_bytes());
    out.extend_from_slice(&rows.to_be_bytes());
    out
}

pub fn encode_close_stdin() -> Vec<u8> {
    vec![CLOSE_STDIN, 0, 0]
}

/// Takes the complete frames off the front of `buf`; unknown kinds and malformed resizes are
/// dropped.
pub fn decode(buf: &mut Vec<u8>) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut at = 0;
    while buf.len() - at >= 3 {
        let len = u16::from_be_bytes([buf[at + 1], buf[at + 2]]) as usize;
        if buf.len() - at - 3 < len {
            break;
        }
        let payload = &buf[at + 3..at + 3 + len];
        match (buf[at], payload.len()) {
            (STDIN, _) => frames.push(Frame::Stdin(payload.to_vec())),
            (RESIZE, 4) => frames.push(Frame::Resize {
                cols: u16::from_be_bytes([payload[0], payload[1]]),
                rows: u16::from_be_bytes([payload[2], payload[3]]),
            }),
            (CLOSE_STDIN, _) => frames.push(Frame::CloseStdin),
            _ => {}
        }
        at += 3 + len;
    }
    buf.drain(..at);
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_across_partial_reads() {
        let mut wire = encode_stdin(b"hello\n");
        wire.extend(encode_resize(97, 31));
        wire.extend(encode_close_stdin());
        let mut buf = wire[..5].to_vec();
        assert!(decode(&mut buf).is_empty());
        buf.extend_from_slice(&wire[5..]);
        assert_eq!(
            decode(&mut buf),
            vec![
                Frame::Stdin(b"hello\n".to_vec()),
                Frame::Resize { cols: 97, rows: 31 },
                Frame::CloseStdin
            ]
        );
        assert!(buf.is_empty());
        let big = vec![7u8; MAX_PAYLOAD + 10];
        let mut buf = encode_stdin(&big);
        let frames = decode(&mut buf);
        assert_eq!(frames.len(), 2);
    }
}
