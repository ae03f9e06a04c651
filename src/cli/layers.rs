//! The effective configuration: the file (or the defaults), then the options given by
//! flag or `FWDGATE_*` variable, then the checks of `Config::finalize`.
//!
//! When the result is invalid, the error names where the bad value came from. The checks
//! see only the merged configuration, so the origin is found by taking sources away one
//! at a time: the first flag, variable or file key without which the same error is no
//! longer raised is the one to blame. A key of the file is named by its line.

use super::GatewayArgs;
use crate::config::{Config, ConfigError};
use std::fmt;
use std::path::Path;
use thiserror::Error;

/// Where an option's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `--listen`
    Flag(String),
    /// `FWDGATE_LISTEN`
    Variable(String),
    /// The default of `--xsub-bind`, neither flag nor variable given.
    Default(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "flag {flag}"),
            Origin::Variable(var) => write!(f, "environment variable {var}"),
            Origin::Default(flag) => write!(f, "the default of {flag}"),
        }
    }
}

#[derive(Debug, Error)]
pub enum LoadError {
    /// The file cannot be read or parsed (the message names the file, and the line of a
    /// parse error).
    #[error(transparent)]
    File(ConfigError),
    /// The merged configuration is invalid; `origin` names the flag, variable or file
    /// line that made it so.
    #[error("{origin}: {error}")]
    Invalid { origin: String, error: ConfigError },
}

/// One option given on the command line or in the environment.
struct Override<'a> {
    /// The field of [`GatewayArgs`].
    id: &'static str,
    apply: Box<dyn Fn(&mut Config) + 'a>,
}

impl GatewayArgs {
    /// Loads the file (if any), applies these options, fills in and checks defaults.
    pub fn load(&self) -> Result<Config, LoadError> {
        let base = match &self.config {
            Some(path) => Config::from_file(path).map_err(LoadError::File)?,
            None => Config::default(),
        };
        let overrides = self.overrides();
        let merge = |base: Config, skip: Option<usize>| {
            let mut c = base;
            for (i, o) in overrides.iter().enumerate() {
                if Some(i) != skip {
                    (o.apply)(&mut c);
                }
            }
            c.finalize()
        };
        let error = match merge(base.clone(), None) {
            Ok(config) => return Ok(config),
            Err(e) => e,
        };
        let message = error.to_string();
        let same_error = |r: Result<Config, ConfigError>| {
            r.err().map(|e| e.to_string()) == Some(message.clone())
        };
        for (i, o) in overrides.iter().enumerate() {
            if !same_error(merge(base.clone(), Some(i))) {
                return Err(LoadError::Invalid {
                    origin: self.origin_of(o.id),
                    error,
                });
            }
        }
        let origin = match &self.config {
            Some(path) => match blame_file_line(path, |file| same_error(merge(file, None))) {
                Some(line) => format!("{} line {line}", path.display()),
                None => path.display().to_string(),
            },
            // the defaults are valid: only an option can have made this
            None => "options".to_owned(),
        };
        Err(LoadError::Invalid { origin, error })
    }

    fn origin_of(&self, id: &str) -> String {
        match self.origins.get(id) {
            Some(origin) => origin.to_string(),
            None => format!("option {id}"),
        }
    }

    /// The options given, each as a change to the configuration.
    fn overrides(&self) -> Vec<Override<'_>> {
        fn add<'a>(
            out: &mut Vec<Override<'a>>,
            id: &'static str,
            given: bool,
            apply: impl Fn(&mut Config) + 'a,
        ) {
            if given {
                out.push(Override {
                    id,
                    apply: Box::new(apply),
                });
            }
        }
        let o = &mut Vec::new();
        // a repeatable option replaces the file's list
        add(o, "listen", !self.listen.is_empty(), |c| {
            c.input.listen.clone_from(&self.listen)
        });
        add(o, "unix", !self.unix.is_empty(), |c| {
            c.input.unix.clone_from(&self.unix)
        });
        add(o, "zmq_bind", !self.zmq_bind.is_empty(), |c| {
            c.output.zmq_bind.clone_from(&self.zmq_bind)
        });
        add(o, "zmq_connect", !self.zmq_connect.is_empty(), |c| {
            c.output.zmq_connect.clone_from(&self.zmq_connect)
        });
        add(o, "tenant_keys", !self.tenant_keys.is_empty(), |c| {
            c.route.tenant_keys.clone_from(&self.tenant_keys)
        });
        add(o, "service_keys", !self.service_keys.is_empty(), |c| {
            c.route.service_keys.clone_from(&self.service_keys)
        });
        if let Some(v) = &self.unix_mode {
            add(o, "unix_mode", true, |c| c.input.unix_mode.clone_from(v));
        }
        if let Some(v) = self.format {
            add(o, "format", true, move |c| c.output.format = v);
        }
        if let Some(v) = &self.tag_regex {
            add(o, "tag_regex", true, |c| c.route.tag_regex.clone_from(v));
        }
        if let Some(v) = &self.topic_suffix {
            add(o, "topic_suffix", true, |c| {
                c.output.topic_suffix.clone_from(v)
            });
        }
        if let Some(v) = &self.metrics_listen {
            add(o, "metrics_listen", true, |c| {
                c.metrics.listen.clone_from(v)
            });
        }
        if let Some(v) = self.log_format {
            add(o, "log_format", true, move |c| c.log.format = v);
        }
        if let Some(v) = &self.log_file {
            add(o, "log_file", true, |c| c.log.file.clone_from(v));
        }
        if let Some(v) = &self.log_level {
            add(o, "log_level", true, |c| c.log.level.clone_from(v));
        }
        std::mem::take(o)
    }
}

/// The line of the first key of the TOML file at `path` whose removal makes
/// `still_fails` false; `None` when no single key is to blame (or the file changed).
fn blame_file_line(path: &Path, still_fails: impl Fn(Config) -> bool) -> Option<usize> {
    let text = std::fs::read_to_string(path).ok()?;
    let table: toml::Table = toml::from_str(&text).ok()?;
    let doc = toml_edit::ImDocument::parse(text.as_str()).ok()?;
    let mut keys = Vec::new();
    leaf_keys(&table, &mut Vec::new(), &mut keys);
    let culprit = keys.into_iter().find(|key| {
        let mut without = table.clone();
        remove_key(&mut without, key);
        match toml::Value::Table(without).try_into::<Config>() {
            Ok(config) => !still_fails(config),
            Err(_) => false,
        }
    })?;
    let offset = key_offset(&doc, &culprit)?;
    Some(text[..offset].matches('\n').count() + 1)
}

/// Every key whose value is not a table (an array of tables counts as one key).
fn leaf_keys(table: &toml::Table, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    for (key, value) in table {
        prefix.push(key.clone());
        match value {
            toml::Value::Table(inner) => leaf_keys(inner, prefix, out),
            _ => out.push(prefix.clone()),
        }
        prefix.pop();
    }
}

fn remove_key(table: &mut toml::Table, key: &[String]) {
    match key {
        [] => {}
        [last] => {
            table.remove(last);
        }
        [first, rest @ ..] => {
            if let Some(toml::Value::Table(inner)) = table.get_mut(first) {
                remove_key(inner, rest);
            }
        }
    }
}

/// The byte offset of `key` (a path of names) in the parsed document.
fn key_offset(doc: &toml_edit::ImDocument<&str>, key: &[String]) -> Option<usize> {
    let mut item = doc.as_item();
    let mut span = None;
    for name in key {
        let (k, next) = item.as_table_like()?.get_key_value(name)?;
        span = k.span().or_else(|| next.span());
        item = next;
    }
    span.map(|s| s.start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Origin;

    fn file(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fwdgate.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn message(args: &GatewayArgs) -> String {
        args.load().unwrap_err().to_string()
    }

    #[test]
    fn a_bad_flag_or_variable_is_named() {
        let mut args = GatewayArgs {
            listen: vec!["nope".into()],
            ..Default::default()
        };
        args.origins
            .insert("listen".into(), Origin::Variable("FWDGATE_LISTEN".into()));
        assert_eq!(
            message(&args),
            "environment variable FWDGATE_LISTEN: invalid configuration: \
             input.listen: \"nope\" is not a host:port address"
        );
        args.origins
            .insert("listen".into(), Origin::Flag("--listen".into()));
        assert!(message(&args).starts_with("flag --listen: "));
    }

    #[test]
    fn a_bad_file_key_is_named_by_its_line() {
        let (_dir, path) = file("[output]\nformat = \"json\"\n\n[metrics]\nlisten = \"nope\"\n");
        let args = GatewayArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        assert_eq!(
            message(&args),
            format!(
                "{} line 5: invalid configuration: metrics.listen: \"nope\" is not a host:port address",
                path.display()
            )
        );
    }

    #[test]
    fn a_bad_file_value_replaced_by_a_flag_is_no_error() {
        let (_dir, path) = file("[input]\nlisten = [\"nope\"]\n");
        let mut args = GatewayArgs {
            config: Some(path),
            listen: vec!["127.0.0.1:1".into()],
            ..Default::default()
        };
        args.origins
            .insert("listen".into(), Origin::Flag("--listen".into()));
        assert_eq!(args.load().unwrap().input.listen, ["127.0.0.1:1"]);
    }

    #[test]
    fn a_rule_across_keys_blames_the_key_that_breaks_it() {
        let (_dir, path) = file("[security]\nuser_auth = true\n");
        let args = GatewayArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        assert!(message(&args).starts_with(&format!("{} line 2: ", path.display())));
    }

    #[test]
    fn dotted_and_inline_keys_have_lines() {
        let (_dir, path) = file("input.max_depth = 2\n");
        let args = GatewayArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        assert!(message(&args).starts_with(&format!("{} line 1: ", path.display())));
    }
}
