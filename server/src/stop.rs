//! Stop strings: text is held back while it could still be the start of one, and cut where one begins.

/// Streams text through, cutting it before the first stop string.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

impl StopMatcher {
    /// Empty stop strings are ignored.
    pub fn new(stops: Vec<String>) -> StopMatcher {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
        }
    }

    /// Takes the next piece; returns the text that is now safe to send and whether a stop string was found
    /// (then nothing more should be pushed).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        self.pending.push_str(piece);
        let first_stop = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(at) = first_stop {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, true);
        }
        // Hold back the longest tail that is a proper prefix of some stop string.
        let held = self
            .stops
            .iter()
            .map(|s| longest_tail_prefix(&self.pending, s))
            .max()
            .unwrap_or(0);
        let cut = self.pending.len() - held;
        let out = self.pending[..cut].to_string();
        self.pending.replace_range(..cut, "");
        (out, false)
    }

    /// The text held back at the end of generation.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// The length of the longest tail of `text` that is a proper prefix of `stop` (on char boundaries).
fn longest_tail_prefix(text: &str, stop: &str) -> usize {
    let max = text.len().min(stop.len().saturating_sub(1));
    (1..=max)
        .rev()
        .find(|&n| {
            let start = text.len() - n;
            text.is_char_boundary(start) && stop.as_bytes().starts_with(&text.as_bytes()[start..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let (text, hit) = m.push(p);
            out.push_str(&text);
            if hit {
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn a_stop_string_split_across_pieces_cuts_the_text_before_it() {
        assert_eq!(
            run(&["END"], &["hello E", "N", "D more"]),
            ("hello ".to_string(), true)
        );
    }

    #[test]
    fn a_partial_match_that_fails_releases_the_held_text() {
        assert_eq!(
            run(&["END"], &["hello EN", "x"]),
            ("hello ENx".to_string(), false)
        );
    }

    #[test]
    fn the_earliest_of_several_stop_strings_wins() {
        assert_eq!(run(&["bb", "a"], &["xxbba"]), ("xx".to_string(), true));
    }

    #[test]
    fn held_text_is_flushed_at_the_end_and_multibyte_text_is_never_split() {
        let mut m = StopMatcher::new(vec!["éz".to_string()]);
        assert_eq!(m.push("aé"), ("a".to_string(), false));
        assert_eq!(m.finish(), "é");
        assert_eq!(run(&[], &["a", "b"]), ("ab".to_string(), false));
    }
}
