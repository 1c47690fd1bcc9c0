//! Encoded UDP answers to cluster names, reused for byte-identical requests.
//!
//! A cluster answer is a pure function of the request's bytes after its ID (flags, question
//! with the client's letter case, EDNS options) and of the record index: the TTLs are fixed and
//! nothing depends on the client's address. So the answer encoded for one request serves every
//! later request whose bytes after the ID are the same, with only the ID patched; a hit skips
//! decoding, lookup and encoding. Forwarded answers are never kept here (their TTLs count down;
//! the forwarder has its own cache), nor error answers to malformed requests.
//!
//! Entries are tagged with the index generation they were computed from and are void once the
//! index is replaced. Each UDP receive loop owns one cache (no lock); it is bounded in entries and
//! in the size of what it keeps, and emptied whole when full: keys are client-controlled, so no
//! client can grow it, and a flood of distinct names only costs misses.

use std::collections::HashMap;

use hickory_proto::op::ResponseCode;

/// Entries kept per receive loop before the cache is emptied.
const MAX_ENTRIES: usize = 4096;
/// Requests and responses larger than these are not kept.
const MAX_REQUEST: usize = 512;
const MAX_RESPONSE: usize = 4096;

pub(super) struct ResponseCache {
    entries: HashMap<Box<[u8]>, Entry>,
    generation: u64,
}

struct Entry {
    response: Box<[u8]>,
    code: ResponseCode,
}

impl ResponseCache {
    pub(super) fn new() -> Self {
        Self {
            entries: HashMap::new(),
            generation: 0,
        }
    }

    /// The answer to `request` (at least a header long) for the index of `generation`, with
    /// the request's ID written in, and its response code.
    pub(super) fn answer(
        &mut self,
        request: &[u8],
        generation: u64,
    ) -> Option<(Vec<u8>, ResponseCode)> {
        if generation != self.generation {
            self.entries.clear();
            self.generation = generation;
            return None;
        }
        let entry = self.entries.get(&request[2..])?;
        let mut response = entry.response.to_vec();
        response[..2].copy_from_slice(&request[..2]);
        Some((response, entry.code))
    }

    /// Keeps `response`, the answer to `request` computed from the index of `generation`.
    pub(super) fn insert(
        &mut self,
        request: &[u8],
        generation: u64,
        response: &[u8],
        code: ResponseCode,
    ) {
        if generation != self.generation
            || request.len() > MAX_REQUEST
            || !(2..=MAX_RESPONSE).contains(&response.len())
        {
            return;
        }
        if self.entries.len() >= MAX_ENTRIES {
            self.entries.clear();
        }
        let entry = Entry {
            response: response.into(),
            code,
        };
        self.entries.insert(request[2..].into(), entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hit_carries_the_new_id_and_a_new_generation_voids_everything() {
        let mut cache = ResponseCache::new();
        let request = [0x12, 0x34, 1, 0, 0, 1, b'x'];
        let response = [0x12, 0x34, 0x81, 0x80, 0, 1, b'y'];
        cache.insert(&request, 0, &response, ResponseCode::NoError);

        let again = [0xab, 0xcd, 1, 0, 0, 1, b'x'];
        let (answer, code) = cache.answer(&again, 0).unwrap();
        assert_eq!(answer, [0xab, 0xcd, 0x81, 0x80, 0, 1, b'y']);
        assert_eq!(code, ResponseCode::NoError);

        // Any other byte after the ID is another request.
        assert!(cache.answer(&[0xab, 0xcd, 1, 0, 0, 1, b'X'], 0).is_none());
        // An answer computed from an older index is not kept.
        assert!(cache.answer(&again, 1).is_none());
        cache.insert(&request, 0, &response, ResponseCode::NoError);
        assert!(cache.answer(&again, 1).is_none());
    }

    #[test]
    fn the_cache_stays_bounded() {
        let mut cache = ResponseCache::new();
        for i in 0..(MAX_ENTRIES as u32 * 3) {
            let mut request = vec![0, 0];
            request.extend_from_slice(&i.to_be_bytes());
            cache.insert(&request, 0, &[0, 0, 1], ResponseCode::NoError);
            assert!(cache.entries.len() <= MAX_ENTRIES);
        }
        // Oversized requests and responses are not kept.
        cache.insert(&[0; MAX_REQUEST + 1], 0, &[0, 0], ResponseCode::NoError);
        cache.insert(&[1, 1, 1], 0, &[0; MAX_RESPONSE + 1], ResponseCode::NoError);
        assert!(cache.answer(&[0; MAX_REQUEST + 1], 0).is_none());
        assert!(cache.answer(&[1, 1, 1], 0).is_none());
    }
}
