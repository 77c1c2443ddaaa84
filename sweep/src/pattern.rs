//! Parameter-name patterns for `pruning.layers`: shell-style globs (`glob::Pattern`) over the
//! dotted names the per-layer reports use. `*` matches any run of characters, dots included
//! (`layer*.weight` matches `layer1.0.conv1.weight`), `?` one character, `[...]` a class.

use glob::{MatchOptions, Pattern};

const OPTIONS: MatchOptions = MatchOptions { case_sensitive: true, require_literal_separator: false, require_literal_leading_dot: false };

/// Whether `name` matches `pattern`; an invalid pattern matches nothing (validation reports it).
pub fn name_matches(pattern: &str, name: &str) -> bool {
    Pattern::new(pattern).map(|p| p.matches_with(name, OPTIONS)).unwrap_or(false)
}

/// Why `pattern` is not a valid pattern, if it is not.
pub(crate) fn pattern_error(pattern: &str) -> Option<String> {
    Pattern::new(pattern).err().map(|e| e.msg.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_crosses_dots_and_question_mark_is_one_character() {
        assert!(name_matches("layer*.weight", "layer1.0.conv1.weight"));
        assert!(name_matches("fc?.weight", "fc1.weight"));
        assert!(!name_matches("fc?.weight", "fc12.weight"));
        assert!(!name_matches("fc.weight", "fc.bias"));
        assert!(name_matches("features.[03].weight", "features.3.weight"));
        assert!(pattern_error("features.[0.weight").is_some());
        assert!(!name_matches("features.[0.weight", "features.[0.weight"));
    }
}
