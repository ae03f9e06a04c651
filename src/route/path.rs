//! Routing keys as paths into a record: Fluentd's record_accessor syntax.
//!
//! - A plain name (anything not starting with `$`) is one top-level key, exactly as
//!   written: `container_id`, `com.docker.swarm.service.name` (dots and all).
//! - `$.a.b` is `record["a"]["b"]`; a name in the dot form runs to the next `.` or `[`.
//! - `$['a.b']['c']` (or `["a.b"]`) is for names with dots, slashes or spaces, as
//!   Kubernetes label keys have: `$['kubernetes']['labels']['app.kubernetes.io/name']`.
//! - `[N]` is element N of an array: `$.items[0].name`.
//! - `$a['b']` (Fluent Bit's form, a name straight after `$`) is `$.a['b']`.
//!
//! The forms mix (`$.kubernetes['labels']['app']`). A malformed path is refused with the
//! position (counted in characters from 1) of what is wrong.

use std::fmt;

/// The most steps a path may have: more than any record a peer may send is deep
/// (`input.max_depth` aside, packed entries are walked at most 16 levels deep).
pub const MAX_STEPS: usize = 16;

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Step {
    /// The value of this key in a map.
    Key(Box<[u8]>),
    /// Element N of an array.
    Index(u32),
}

/// A parsed routing key: the steps from the record down to the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPath {
    pub steps: Vec<Step>,
}

/// Why a path cannot be used, and where (1-based character position in the path).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} at character {position}")]
pub struct PathError {
    pub position: usize,
    pub reason: &'static str,
}

impl fmt::Display for KeyPath {
    /// The path in the bracket form, which can say every key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("$")?;
        for step in &self.steps {
            match step {
                Step::Key(k) => write!(f, "['{}']", String::from_utf8_lossy(k))?,
                Step::Index(i) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

impl KeyPath {
    /// Parses a routing key as configured.
    pub fn parse(text: &str) -> Result<KeyPath, PathError> {
        let Some(rest) = text.strip_prefix('$') else {
            return Ok(KeyPath {
                steps: vec![Step::Key(text.as_bytes().into())],
            });
        };
        let chars: Vec<char> = rest.chars().collect();
        let mut parser = Parser {
            chars: &chars,
            at: 0,
            steps: Vec::new(),
        };
        parser.path()?;
        Ok(KeyPath {
            steps: parser.steps,
        })
    }
}

struct Parser<'a> {
    chars: &'a [char],
    /// Index into `chars` (the text after `$`).
    at: usize,
    steps: Vec<Step>,
}

impl Parser<'_> {
    /// The 1-based position in the whole path (with its `$`) of `chars[at]`.
    fn error(&self, at: usize, reason: &'static str) -> PathError {
        PathError {
            position: at + 2,
            reason,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn push(&mut self, step: Step, at: usize) -> Result<(), PathError> {
        if self.steps.len() == MAX_STEPS {
            return Err(self.error(at, "more than 16 steps"));
        }
        self.steps.push(step);
        Ok(())
    }

    fn path(&mut self) -> Result<(), PathError> {
        match self.peek() {
            None => return Err(self.error(self.at, "a path needs a key after `$`")),
            // Fluent Bit's `$name…`: the first name needs no dot.
            Some(c) if c != '.' && c != '[' => self.name()?,
            Some(_) => {}
        }
        while let Some(c) = self.peek() {
            match c {
                '.' => {
                    self.at += 1;
                    self.name()?;
                }
                '[' => self.bracket()?,
                _ => return Err(self.error(self.at, "expected `.` or `[`")),
            }
        }
        Ok(())
    }

    /// A name of the dot form: up to the next `.` or `[`, not empty.
    fn name(&mut self) -> Result<(), PathError> {
        let start = self.at;
        while let Some(c) = self.peek() {
            match c {
                '.' | '[' => break,
                ']' | '\'' | '"' => {
                    return Err(self.error(self.at, "this character needs the bracket form"))
                }
                _ => self.at += 1,
            }
        }
        if self.at == start {
            return Err(self.error(start, "empty key name"));
        }
        let name: String = self.chars[start..self.at].iter().collect();
        self.push(Step::Key(name.into_bytes().into()), start)
    }

    /// `['name']`, `["name"]` or `[N]`, at the `[`.
    fn bracket(&mut self) -> Result<(), PathError> {
        let open = self.at;
        self.at += 1;
        match self.peek() {
            Some(quote @ ('\'' | '"')) => {
                self.at += 1;
                let start = self.at;
                while self.peek().is_some_and(|c| c != quote) {
                    self.at += 1;
                }
                if self.peek().is_none() {
                    return Err(self.error(open, "unclosed quote"));
                }
                let name: String = self.chars[start..self.at].iter().collect();
                self.at += 1;
                if self.peek() != Some(']') {
                    return Err(self.error(self.at, "expected `]` after the quoted key"));
                }
                self.at += 1;
                if name.is_empty() {
                    return Err(self.error(start, "empty key name"));
                }
                self.push(Step::Key(name.into_bytes().into()), open)
            }
            Some(c) if c.is_ascii_digit() => {
                let start = self.at;
                while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                    self.at += 1;
                }
                let digits: String = self.chars[start..self.at].iter().collect();
                if self.peek() != Some(']') {
                    return Err(self.error(self.at, "expected `]` after the index"));
                }
                self.at += 1;
                let index = digits
                    .parse::<u32>()
                    .map_err(|_| self.error(start, "index too large"))?;
                self.push(Step::Index(index), open)
            }
            None => Err(self.error(open, "unclosed `[`")),
            Some(_) => Err(self.error(self.at, "expected a quoted key or an index after `[`")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Step {
        Step::Key(s.as_bytes().into())
    }

    fn steps(text: &str) -> Vec<Step> {
        KeyPath::parse(text).unwrap().steps
    }

    fn error(text: &str) -> (usize, &'static str) {
        let e = KeyPath::parse(text).unwrap_err();
        (e.position, e.reason)
    }

    #[test]
    fn plain_names_are_one_key_as_written() {
        assert_eq!(steps("TENANT_ID"), [key("TENANT_ID")]);
        assert_eq!(
            steps("com.docker.swarm.service.name"),
            [key("com.docker.swarm.service.name")]
        );
        assert_eq!(steps("a['b']"), [key("a['b']")]);
    }

    #[test]
    fn dot_and_bracket_forms() {
        let ns = [key("kubernetes"), key("namespace_name")];
        assert_eq!(steps("$.kubernetes.namespace_name"), ns);
        assert_eq!(steps("$['kubernetes']['namespace_name']"), ns);
        assert_eq!(steps("$[\"kubernetes\"][\"namespace_name\"]"), ns);
        assert_eq!(steps("$kubernetes['namespace_name']"), ns);
        assert_eq!(steps("$.kubernetes['namespace_name']"), ns);
        assert_eq!(
            steps("$['kubernetes']['labels']['app.kubernetes.io/name']"),
            [
                key("kubernetes"),
                key("labels"),
                key("app.kubernetes.io/name")
            ]
        );
        assert_eq!(
            steps("$.key1[0].key2"),
            [key("key1"), Step::Index(0), key("key2")]
        );
        assert_eq!(
            steps("$['dot.key'][12]['space key']"),
            [key("dot.key"), Step::Index(12), key("space key")]
        );
        assert_eq!(steps("$.log"), [key("log")]);
        assert_eq!(steps("$.ünï.ç"), [key("ünï"), key("ç")]);
    }

    #[test]
    fn malformed_paths_say_where() {
        assert_eq!(error("$"), (2, "a path needs a key after `$`"));
        assert_eq!(error("$."), (3, "empty key name"));
        assert_eq!(error("$.a..b"), (5, "empty key name"));
        assert_eq!(error("$.a."), (5, "empty key name"));
        assert_eq!(error("$['a'"), (6, "expected `]` after the quoted key"));
        assert_eq!(error("$['a"), (2, "unclosed quote"));
        assert_eq!(
            error("$[x]"),
            (3, "expected a quoted key or an index after `[`")
        );
        assert_eq!(error("$.a[1"), (6, "expected `]` after the index"));
        assert_eq!(error("$.a["), (4, "unclosed `[`"));
        assert_eq!(error("$['']"), (4, "empty key name"));
        assert_eq!(error("$.a]"), (4, "this character needs the bracket form"));
        assert_eq!(error("$['a']b"), (7, "expected `.` or `[`"));
        assert_eq!(error("$[99999999999]"), (3, "index too large"));
        let deep = format!("${}", ".k".repeat(MAX_STEPS + 1));
        assert_eq!(error(&deep).1, "more than 16 steps");
    }

    #[test]
    fn display_is_the_bracket_form_and_parses_back() {
        for text in ["$.a.b", "$['a.b'][3]", "$x['y z']"] {
            let path = KeyPath::parse(text).unwrap();
            assert_eq!(KeyPath::parse(&path.to_string()).unwrap(), path);
        }
        assert_eq!(KeyPath::parse("$.a[1]").unwrap().to_string(), "$['a'][1]");
    }
}
