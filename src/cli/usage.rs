//! Parsing the command line with clap, and saying where a bad value came from.
//!
//! clap reads an option's `FWDGATE_*` variable when the flag is absent, and when that
//! value is invalid it still names the flag (`invalid value 'xml' for '--format
//! <FORMAT>'`), which the user did not type. Here such an error names the variable.
//! After a good parse, each gateway option records whether it came from its flag or its
//! variable, for the errors of the configuration layers; each option of `fwdgate proxy`
//! likewise, or that it is the default, for the proxy's errors.

use super::{Cli, Command, GatewayArgs, Origin, ProxyArgs};
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches};
use std::ffi::OsString;

/// What the command line asks for.
#[derive(Debug)]
pub enum ParseOutcome {
    /// Options to act on.
    Parsed(Box<Cli>),
    /// Help or version text, or a malformed command line: clap prints it
    /// (`clap::Error::print`, to stdout for help and version, else to stderr).
    Clap(clap::Error),
    /// An environment variable with a value the option does not take; the message
    /// names the variable.
    BadVariable(String),
}

/// Parses `argv` (with the `FWDGATE_*` variables of this process).
pub fn parse<I, T>(argv: I) -> ParseOutcome
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let matches = match Cli::command().try_get_matches_from(&argv) {
        Ok(m) => m,
        Err(e) => return classify(e, &argv),
    };
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => return classify(e, &argv),
    };
    match (&mut cli.command, matches.subcommand()) {
        (Some(Command::Proxy(proxy)), Some(("proxy", sub))) => {
            proxy.origins = origins::<ProxyArgs>(sub);
        }
        (_, sub) => {
            let gateway_matches = match sub {
                Some(("run" | "check-config", sub)) => sub,
                _ => &matches,
            };
            cli.gateway_args_mut().origins = origins::<GatewayArgs>(gateway_matches);
        }
    }
    ParseOutcome::Parsed(Box::new(cli))
}

/// Where each option of `A` with a value came from: its flag, its variable, or its
/// default.
fn origins<A: Args>(matches: &ArgMatches) -> std::collections::BTreeMap<String, Origin> {
    let defs = A::augment_args(clap::Command::new("options"));
    defs.get_arguments()
        .filter_map(|arg| {
            let id = arg.get_id().as_str();
            let origin = match matches.value_source(id)? {
                ValueSource::CommandLine => Origin::Flag(format!("--{}", arg.get_long()?)),
                ValueSource::EnvVariable => {
                    Origin::Variable(arg.get_env()?.to_string_lossy().into_owned())
                }
                ValueSource::DefaultValue => Origin::Default(format!("--{}", arg.get_long()?)),
                _ => return None,
            };
            Some((id.to_owned(), origin))
        })
        .collect()
}

/// An invalid value whose option was not on the command line came from its variable:
/// say so. Every other error stays clap's.
fn classify(e: clap::Error, argv: &[OsString]) -> ParseOutcome {
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return ParseOutcome::Clap(e);
    }
    let Some(ContextValue::String(shown)) = e.get(ContextKind::InvalidArg) else {
        return ParseOutcome::Clap(e);
    };
    // "--format <FORMAT>"
    let Some(long) = shown
        .split_whitespace()
        .next()
        .and_then(|f| f.strip_prefix("--"))
    else {
        return ParseOutcome::Clap(e);
    };
    let cli = Cli::command();
    let Some(variable) = variable_of(command_of(&cli, argv), long) else {
        return ParseOutcome::Clap(e);
    };
    if given_on_command_line(argv, long) {
        return ParseOutcome::Clap(e);
    }
    let value = match e.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(v)) => v.clone(),
        _ => String::new(),
    };
    let mut message = format!("environment variable {variable}: invalid value {value:?}");
    if let Some(ContextValue::Strings(valid)) = e.get(ContextKind::ValidValue) {
        message.push_str(&format!(" (possible values: {})", valid.join(", ")));
    }
    ParseOutcome::BadVariable(message)
}

/// The command whose options `argv` gives: a command's options follow its name, which
/// is then the first argument (`args_conflicts_with_subcommands`), else the top level's.
fn command_of<'a>(cli: &'a clap::Command, argv: &[OsString]) -> &'a clap::Command {
    argv.get(1)
        .and_then(|a| a.to_str())
        .and_then(|name| cli.find_subcommand(name))
        .unwrap_or(cli)
}

/// The variable of the option `--long` of this command. Only this command's: the same
/// flag of another command has another variable (`--log-format` of the gateway and of
/// the proxy).
fn variable_of(cmd: &clap::Command, long: &str) -> Option<String> {
    cmd.get_arguments()
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env())
        .map(|v| v.to_string_lossy().into_owned())
}

/// `--long VALUE` or `--long=VALUE` before any `--`.
fn given_on_command_line(argv: &[OsString], long: &str) -> bool {
    let flag = format!("--{long}");
    let with_value = format!("--{long}=");
    argv.iter()
        .skip(1)
        .map(|a| a.to_string_lossy())
        .take_while(|a| a != "--")
        .any(|a| a == flag || a.starts_with(&with_value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn given(args: &[&str], long: &str) -> bool {
        let argv: Vec<OsString> = args.iter().map(OsString::from).collect();
        given_on_command_line(&argv, long)
    }

    #[test]
    fn a_flag_counts_with_or_without_equals_and_not_after_double_dash() {
        assert!(given(&["fwdgate", "--format", "xml"], "format"));
        assert!(given(&["fwdgate", "run", "--format=xml"], "format"));
        assert!(!given(&["fwdgate", "--log-format", "xml"], "format"));
        assert!(!given(&["fwdgate", "--", "--format"], "format"));
    }

    #[test]
    fn every_gateway_flag_has_a_variable() {
        for arg in GatewayArgs::augment_args(clap::Command::new("g")).get_arguments() {
            if let Some(long) = arg.get_long() {
                assert!(
                    variable_of(&Cli::command(), long).is_some(),
                    "--{long} has no FWDGATE_* variable"
                );
            }
        }
    }

    #[test]
    fn every_proxy_flag_has_a_proxy_variable() {
        let cli = Cli::command();
        let argv = [OsString::from("fwdgate"), OsString::from("proxy")];
        let proxy = command_of(&cli, &argv);
        assert_eq!(proxy.get_name(), "proxy");
        for arg in ProxyArgs::augment_args(clap::Command::new("p")).get_arguments() {
            if let Some(long) = arg.get_long() {
                let variable = variable_of(proxy, long);
                assert!(
                    variable
                        .as_deref()
                        .is_some_and(|v| v.starts_with("FWDGATE_PROXY_")),
                    "--{long} has {variable:?}, not an FWDGATE_PROXY_* variable"
                );
            }
        }
    }

    #[test]
    fn proxy_options_record_flag_and_default_origins() {
        let ParseOutcome::Parsed(cli) = parse(["fwdgate", "proxy", "--xpub-bind", "tcp://x:1"])
        else {
            panic!("not parsed")
        };
        let Some(Command::Proxy(p)) = &cli.command else {
            panic!("not the proxy: {:?}", cli.command)
        };
        assert_eq!(p.xpub_bind, ["tcp://x:1"]);
        assert_eq!(p.xsub_bind, ["tcp://0.0.0.0:6363"]);
        assert_eq!(p.origins["xpub_bind"], Origin::Flag("--xpub-bind".into()));
        assert_eq!(
            p.origins["xsub_bind"],
            Origin::Default("--xsub-bind".into())
        );
    }

    #[test]
    fn flags_and_their_origins() {
        let ParseOutcome::Parsed(cli) = parse(["fwdgate", "check-config", "--listen", "a:1"])
        else {
            panic!("not parsed")
        };
        let g = cli.gateway_args();
        assert_eq!(g.listen, ["a:1"]);
        assert_eq!(g.origins["listen"], Origin::Flag("--listen".into()));
    }

    #[test]
    fn tail_takes_only_its_own_options() {
        assert!(matches!(
            parse(["fwdgate", "tail", "--connect", "tcp://x:1", "--tenant", "t", "--listen", "a:1"]),
            ParseOutcome::Clap(e) if e.kind() == ErrorKind::UnknownArgument
        ));
    }
}
