//! Generated names, as Kubernetes makes them: `generateName` plus five random characters of
//! its alphabet (consonants and digits that cannot spell words or be confused), the base cut
//! so that the result stays a valid 63-character name.

use rand::Rng;

/// Kubernetes' `utilrand` alphabet: no vowels, no `0 1 3 a e i o u y`.
pub const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Length of the random suffix.
pub const SUFFIX_LEN: usize = 5;

/// The longest base kept: 63 minus the suffix.
pub const MAX_BASE_LEN: usize = 63 - SUFFIX_LEN;

/// Five random characters of [`ALPHABET`].
pub fn random_suffix() -> String {
    let mut rng = rand::thread_rng();
    (0..SUFFIX_LEN)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// `base` (cut to [`MAX_BASE_LEN`] bytes on a character boundary) and a random suffix, as
/// Kubernetes' `SimpleNameGenerator` does for `metadata.generateName`.
pub fn generate(base: &str) -> String {
    let mut cut = base.len().min(MAX_BASE_LEN);
    while !base.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{}", &base[..cut], random_suffix())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_keep_the_base_and_fit_63_characters() {
        let n = generate("web-");
        let suffix = n.strip_prefix("web-").expect("base kept");
        assert_eq!(suffix.len(), SUFFIX_LEN);
        assert!(suffix.bytes().all(|c| ALPHABET.contains(&c)), "{n}");
        let long = "x".repeat(80);
        let n = generate(&long);
        assert_eq!(n.len(), 63);
        assert!(n.starts_with(&long[..MAX_BASE_LEN]));
        // A multi-byte character at the cut is not split.
        let n = generate(&format!("{}é-", "a".repeat(57)));
        assert!(n.len() <= 63 && n.starts_with(&"a".repeat(57)), "{n}");
    }
}
