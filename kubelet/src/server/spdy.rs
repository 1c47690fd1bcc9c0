//! SPDY/3.1 framing as kubectl's port-forward falls back to it (`Upgrade: SPDY/3.1`): the frames
//! a server meets (SYN_STREAM, DATA, RST_STREAM, PING, GOAWAY; SETTINGS and WINDOW_UPDATE are
//! read and ignored, as Go's spdystream, the only peer, does no flow control) and the ones it
//! sends (SYN_REPLY, DATA, PING). Header blocks are zlib streams spanning the connection, the
//! client's compressed with the protocol's dictionary. No crate speaks SPDY any more, hence
//! this module.

use std::io;

use axum::body::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const FLAG_FIN: u8 = 0x01;

/// The largest frame accepted (the client sends at most 32 KiB of data per frame).
const MAX_FRAME: usize = 1 << 20;
/// The largest header block accepted once inflated.
const MAX_HEADERS: usize = 64 * 1024;

/// The words of the SPDY/3 header dictionary, each preceded by its length on the wire.
const DICTIONARY_WORDS: &[&str] = &[
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

/// What follows the words in the dictionary, as it is.
const DICTIONARY_TAIL: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
    "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
);

fn dictionary() -> Vec<u8> {
    let mut d = Vec::with_capacity(1424);
    for word in DICTIONARY_WORDS {
        d.extend_from_slice(&(word.len() as u32).to_be_bytes());
        d.extend_from_slice(word.as_bytes());
    }
    d.extend_from_slice(DICTIONARY_TAIL.as_bytes());
    d
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// A frame a client sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream: u32,
        headers: Vec<(String, String)>,
    },
    Data {
        stream: u32,
        data: Bytes,
        fin: bool,
    },
    RstStream {
        stream: u32,
    },
    Ping(u32),
    GoAway,
    /// SETTINGS, WINDOW_UPDATE, HEADERS and the like: nothing to do.
    Ignored,
}

/// Reads frames; owns the connection's inflate stream.
pub struct FrameReader<R> {
    io: R,
    inflate: Decompress,
    dictionary: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(io: R) -> Self {
        Self {
            io,
            inflate: Decompress::new(true),
            dictionary: dictionary(),
        }
    }

    /// The next frame; `None` at the end of the connection.
    pub async fn next(&mut self) -> io::Result<Option<Frame>> {
        let mut head = [0u8; 8];
        match self.io.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let flags = head[4];
        let length = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        if length > MAX_FRAME {
            return Err(invalid(format!("a frame of {length} bytes")));
        }
        let mut body = vec![0u8; length];
        self.io.read_exact(&mut body).await?;
        let word = |at: usize| -> io::Result<u32> {
            body.get(at..at + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| invalid("a control frame too short"))
        };
        if head[0] & 0x80 == 0 {
            let stream = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            return Ok(Some(Frame::Data {
                stream,
                data: Bytes::from(body),
                fin: flags & FLAG_FIN != 0,
            }));
        }
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        if version != VERSION {
            return Err(invalid(format!("SPDY version {version}")));
        }
        let frame = match u16::from_be_bytes([head[2], head[3]]) {
            SYN_STREAM => {
                let stream = word(0)? & 0x7fff_ffff;
                let block = body
                    .get(10..)
                    .ok_or_else(|| invalid("SYN_STREAM too short"))?;
                let headers = self.headers(block)?;
                Frame::SynStream { stream, headers }
            }
            RST_STREAM => Frame::RstStream {
                stream: word(0)? & 0x7fff_ffff,
            },
            PING => Frame::Ping(word(0)?),
            GOAWAY => Frame::GoAway,
            _ => Frame::Ignored,
        };
        Ok(Some(frame))
    }

    /// Inflates one header block (a sync-flushed piece of the connection's stream) and parses it.
    fn headers(&mut self, mut block: &[u8]) -> io::Result<Vec<(String, String)>> {
        let mut out = Vec::with_capacity(1024);
        while !block.is_empty() {
            if out.len() >= MAX_HEADERS {
                return Err(invalid("a header block too large"));
            }
            out.reserve(4096);
            let before = self.inflate.total_in();
            match self
                .inflate
                .decompress_vec(block, &mut out, FlushDecompress::Sync)
            {
                Ok(Status::Ok | Status::BufError | Status::StreamEnd) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(&self.dictionary)
                        .map_err(|e| invalid(format!("the header dictionary: {e}")))?;
                }
                Err(e) => return Err(invalid(format!("a header block: {e}"))),
            }
            block = &block[(self.inflate.total_in() - before) as usize..];
        }
        parse_header_block(&out)
    }
}

/// Reads a header block's length-prefixed words.
struct Words<'a>(&'a [u8]);

impl<'a> Words<'a> {
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(invalid("a header block cut short"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn length(&mut self) -> io::Result<usize> {
        let l = self.take(4)?;
        Ok(u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
    }

    fn word(&mut self) -> io::Result<&'a [u8]> {
        let n = self.length()?;
        self.take(n)
    }
}

fn parse_header_block(b: &[u8]) -> io::Result<Vec<(String, String)>> {
    let mut words = Words(b);
    let count = words.length()?;
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let name = String::from_utf8_lossy(words.word()?).to_ascii_lowercase();
        let value = String::from_utf8_lossy(words.word()?).into_owned();
        headers.push((name, value));
    }
    Ok(headers)
}

/// A frame the server sends.
#[derive(Debug)]
pub enum OutFrame {
    SynReply { stream: u32 },
    Data { stream: u32, data: Bytes, fin: bool },
    Ping(u32),
}

/// Writes frames; owns the connection's deflate stream (no dictionary: the reader takes a
/// stream without one).
pub struct FrameWriter<W> {
    io: W,
    deflate: Compress,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(io: W) -> Self {
        Self {
            io,
            deflate: Compress::new(Compression::default(), true),
        }
    }

    pub async fn send(&mut self, reply: OutFrame) -> io::Result<()> {
        let mut out = Vec::with_capacity(64);
        match reply {
            OutFrame::Data { stream, data, fin } => {
                out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
                out.push(if fin { FLAG_FIN } else { 0 });
                out.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
                self.io.write_all(&out).await?;
                self.io.write_all(&data).await?;
            }
            OutFrame::SynReply { stream } => {
                let mut body = (stream & 0x7fff_ffff).to_be_bytes().to_vec();
                // An empty header block: a count of zero.
                body.extend_from_slice(&self.compress(&0u32.to_be_bytes())?);
                control(&mut out, SYN_REPLY, 0, &body);
                self.io.write_all(&out).await?;
            }
            OutFrame::Ping(id) => {
                control(&mut out, PING, 0, &id.to_be_bytes());
                self.io.write_all(&out).await?;
            }
        }
        self.io.flush().await
    }

    fn compress(&mut self, input: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(input.len() + 64);
        self.deflate
            .compress_vec(input, &mut out, FlushCompress::Sync)
            .map_err(|e| invalid(format!("compressing headers: {e}")))?;
        Ok(out)
    }
}

fn control(out: &mut Vec<u8>, kind: u16, flags: u8, body: &[u8]) {
    out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.push(flags);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary() {
        let d = dictionary();
        assert!(d.starts_with(b"\0\0\0\x07options\0\0\0\x04head"));
    }

    /// A client's SYN_STREAM, its headers compressed with the dictionary as Go's framer does.
    fn syn_stream(deflate: &mut Compress, stream: u32, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut block = (headers.len() as u32).to_be_bytes().to_vec();
        for (k, v) in headers {
            for s in [k, v] {
                block.extend_from_slice(&(s.len() as u32).to_be_bytes());
                block.extend_from_slice(s.as_bytes());
            }
        }
        let mut compressed = Vec::with_capacity(block.len() + 64);
        deflate
            .compress_vec(&block, &mut compressed, FlushCompress::Sync)
            .unwrap();
        let mut body = stream.to_be_bytes().to_vec();
        body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        body.extend_from_slice(&compressed);
        let mut out = Vec::new();
        control(&mut out, SYN_STREAM, 0, &body);
        out
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let mut deflate = Compress::new(Compression::best(), true);
        deflate.set_dictionary(&dictionary()).unwrap();
        let mut wire = syn_stream(
            &mut deflate,
            1,
            &[
                ("streamtype", "error"),
                ("port", "8080"),
                ("requestid", "0"),
            ],
        );
        wire.extend(syn_stream(&mut deflate, 3, &[("streamtype", "data")]));
        let mut data = Vec::new();
        FrameWriter::new(&mut data)
            .send(OutFrame::Data {
                stream: 3,
                data: Bytes::from_static(b"hello"),
                fin: true,
            })
            .await
            .unwrap();
        wire.extend(&data);
        control(&mut wire, PING, 0, &7u32.to_be_bytes());
        let mut reader = FrameReader::new(&wire[..]);
        let Some(Frame::SynStream { stream, headers }) = reader.next().await.unwrap() else {
            panic!("a SYN_STREAM");
        };
        assert_eq!(stream, 1);
        assert_eq!(headers[1], ("port".to_string(), "8080".to_string()));
        let Some(Frame::SynStream { stream: 3, headers }) = reader.next().await.unwrap() else {
            panic!("a second SYN_STREAM");
        };
        assert_eq!(headers, [("streamtype".to_string(), "data".to_string())]);
        assert_eq!(
            reader.next().await.unwrap(),
            Some(Frame::Data {
                stream: 3,
                data: Bytes::from_static(b"hello"),
                fin: true
            })
        );
        assert_eq!(reader.next().await.unwrap(), Some(Frame::Ping(7)));
        assert_eq!(reader.next().await.unwrap(), None);
    }
}
