//! Payload masking (RFC 6455 §5.3): XOR every byte with the 4-byte masking key, the key
//! index being the byte's position modulo 4.
//!
//! Masking is an involution, so the same functions mask and unmask. The hot loop works on
//! 32-byte blocks XORed with a pre-expanded 32-byte key pattern: a fixed-size inner loop that
//! LLVM turns into SIMD loads/XORs/stores on every target, without `unsafe` or
//! target-specific intrinsics.

/// XOR `buf` with `key`, starting at key index 0.
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4]) {
    // Expand the key into a 32-byte block pattern. 32 is a multiple of 4, so every block
    // starts at key index 0 again.
    let mut pattern = [0u8; 32];
    for (i, b) in pattern.iter_mut().enumerate() {
        *b = key[i & 3];
    }
    let mut blocks = buf.chunks_exact_mut(32);
    for block in &mut blocks {
        for (b, m) in block.iter_mut().zip(pattern.iter()) {
            *b ^= *m;
        }
    }
    let rest = blocks.into_remainder();
    // The remainder starts at a multiple of 32, hence at key index 0.
    let word = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut words = rest.chunks_exact_mut(8);
    for w in &mut words {
        let v = u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]) ^ word;
        w.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in words.into_remainder().iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

/// XOR `buf` with `key` as if `buf` started `offset` bytes into the payload, so a payload
/// can be (un)masked piecewise as it arrives.
#[inline]
pub fn apply_mask_offset(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let mut rotated = key;
    rotated.rotate_left(offset & 3);
    apply_mask(buf, rotated);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(buf: &mut [u8], key: [u8; 4], offset: usize) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= key[(i + offset) & 3];
        }
    }

    #[test]
    fn matches_naive_for_all_lengths_and_offsets() {
        let key = [0x12, 0x34, 0x56, 0x78];
        for len in 0..100 {
            for offset in 0..8 {
                let orig: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
                let mut fast = orig.clone();
                let mut slow = orig.clone();
                apply_mask_offset(&mut fast, key, offset);
                naive(&mut slow, key, offset);
                assert_eq!(fast, slow, "len {len} offset {offset}");
            }
        }
    }

    #[test]
    fn piecewise_equals_whole() {
        let key = [1, 2, 3, 4];
        let orig: Vec<u8> = (0..257u32).map(|i| i as u8).collect();
        let mut whole = orig.clone();
        apply_mask(&mut whole, key);
        let mut parts = orig.clone();
        let (a, b) = parts.split_at_mut(37);
        apply_mask_offset(a, key, 0);
        apply_mask_offset(b, key, 37);
        assert_eq!(whole, parts);
    }
}
