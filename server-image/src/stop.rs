//! Stop sequences, searched in the new text only: text that could be the start of a stop string
//! is held back (at most the longest stop's length less one byte), so a stop string split across
//! tokens is found, and each token costs a search over a bounded window, not the whole output.

/// What the text of one step releases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// Text that can be shown (possibly empty: held back as a possible stop prefix).
    Emit(String),
    /// A stop string was found: the text before it, and the generation ends there.
    Stop(String),
}

#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Bytes kept back after each step: the longest stop's length less one.
    hold: usize,
    /// Text not emitted yet (at most `hold` bytes between steps).
    pending: String,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        let hold = stops
            .iter()
            .map(|s| s.len().saturating_sub(1))
            .max()
            .unwrap_or(0);
        Self {
            stops,
            hold,
            pending: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> Scan {
        self.pending.push_str(text);
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(pos) = hit {
            let before = self.pending[..pos].to_string();
            self.pending.clear();
            return Scan::Stop(before);
        }
        let mut split = self.pending.len().saturating_sub(self.hold);
        while !self.pending.is_char_boundary(split) {
            split -= 1;
        }
        Scan::Emit(self.pending.drain(..split).collect())
    }

    /// The held text, at the end of the generation.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Bytes searched by the next `push` besides its own text.
    pub fn held(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces`; returns what was shown and whether a stop ended it.
    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut shown = String::new();
        for p in pieces {
            match m.push(p) {
                Scan::Emit(t) => shown.push_str(&t),
                Scan::Stop(t) => {
                    shown.push_str(&t);
                    return (shown, true);
                }
            }
            assert!(m.held() < 8, "held {} bytes", m.held());
        }
        shown.push_str(&m.finish());
        (shown, false)
    }

    #[test]
    fn stop_strings_split_across_pieces_are_found() {
        assert_eq!(
            run(&["END"], &["abc E", "N", "D tail"]),
            ("abc ".into(), true)
        );
        assert_eq!(run(&["\n\n"], &["one\n", "\ntwo"]), ("one".into(), true));
        assert_eq!(run(&["stop"], &["s", "t", "o", "p"]), ("".into(), true));
    }

    #[test]
    fn the_earliest_of_several_stops_wins() {
        assert_eq!(run(&["b", "abc"], &["xxabc"]), ("xx".into(), true));
        assert_eq!(run(&["yz", "x"], &["wxyz"]), ("w".into(), true));
    }

    #[test]
    fn a_false_start_is_released() {
        assert_eq!(
            run(&["END"], &["EN", "d EN", "TRY"]),
            ("ENd ENTRY".into(), false)
        );
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
    }

    #[test]
    fn held_text_splits_only_at_character_boundaries() {
        // The hold (3 bytes) would cut "é" (2 bytes) in half.
        assert_eq!(run(&["ëëx"], &["aé", "bé"]), ("aébé".into(), false));
        assert_eq!(run(&["é!"], &["xé", "!"]), ("x".into(), true));
    }
}
