//! sha256 digests (`sha256:<64 hex>`): parsing, and readers that hash what passes through them.

use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

use super::ImageError;

/// The lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// `sha256:<hex>` of `bytes`.
pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

/// The hex part of a `sha256:<64 lower-case hex>` digest; anything else (another algorithm, a
/// path separator smuggled into a blob name) is refused, so the hex is safe as a file name.
pub(crate) fn sha256_hex(digest: &str) -> Result<&str, ImageError> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if is_hex64(hex) => Ok(hex),
        _ => Err(ImageError::content(
            format!("digest {digest:?}"),
            "not a sha256 digest (sha256:<64 lower-case hex digits>)",
        )),
    }
}

pub(crate) fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Running sha256 and byte count of a stream, with an upper bound on its length.
pub(crate) struct HashState {
    hasher: Sha256,
    bytes: u64,
    limit: u64,
}

impl HashState {
    pub(crate) fn new(limit: u64) -> Self {
        HashState {
            hasher: Sha256::new(),
            bytes: 0,
            limit,
        }
    }

    /// `sha256:<hex>` of everything seen so far.
    pub(crate) fn digest(&self) -> String {
        format!("sha256:{}", hex(&self.hasher.clone().finalize()))
    }

    /// Checks the stream's digest against `expected`.
    pub(crate) fn verify(&self, what: &str, expected: &str) -> Result<(), ImageError> {
        let actual = self.digest();
        if actual == expected {
            Ok(())
        } else {
            Err(ImageError::DigestMismatch {
                what: what.to_string(),
                expected: expected.to_string(),
                actual,
            })
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) -> io::Result<()> {
        self.bytes += data.len() as u64;
        if self.bytes > self.limit {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                format!("stream longer than the limit of {} bytes", self.limit),
            ));
        }
        self.hasher.update(data);
        Ok(())
    }
}

/// A reader that feeds everything read through it into a [`HashState`].
pub(crate) struct HashingReader<'a, R> {
    inner: R,
    state: &'a mut HashState,
}

impl<'a, R: Read> HashingReader<'a, R> {
    pub(crate) fn new(inner: R, state: &'a mut HashState) -> Self {
        HashingReader { inner, state }
    }
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.state.update(&buf[..n])?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_and_limits() {
        let empty = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(sha256_digest(b""), empty);
        assert_eq!(sha256_hex(empty).unwrap().len(), 64);
        assert!(sha256_hex("sha256:../../etc/passwd").is_err());
        assert!(sha256_hex("sha512:00").is_err());

        let mut state = HashState::new(4);
        let mut out = Vec::new();
        HashingReader::new(&b"abcd"[..], &mut state)
            .read_to_end(&mut out)
            .unwrap();
        state.verify("abcd", &sha256_digest(b"abcd")).unwrap();
        let mut state = HashState::new(3);
        assert!(
            HashingReader::new(&b"abcd"[..], &mut state)
                .read_to_end(&mut out)
                .is_err()
        );
    }
}
