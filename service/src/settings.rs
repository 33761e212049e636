//! The settings file: one TOML file per binary whose keys are the binary's
//! long flags in snake_case (`flush_interval_ms = 250` is
//! `--flush-interval-ms 250`; a flag given more than once takes a list,
//! `tls_name = ["a", "b"]`).
//!
//! clap stays the one parser of every setting: the file's entries are
//! turned into flags and parsed with the others, so a file value meets the
//! same typed parser, bounds and defaults as a flag. Precedence, highest
//! first: a flag on the command line, its `EDGETALLY_…` environment
//! variable, the file, the default written next to the flag.
//!
//! A key that names no flag is an error naming the key (a typo in a limit
//! must not pass silently), and so is a value the flag's parser refuses.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches};

/// Flags that are not file keys: the file's own path, the one-shot check,
/// and clap's help and version.
const NOT_KEYS: [&str; 4] = ["config", "check_config", "help", "version"];

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("reading settings file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("settings file {path}: {reason}")]
    Syntax { path: String, reason: String },
    #[error("settings file {path}: unknown key `{key}`{hint}")]
    UnknownKey { path: String, key: String, hint: String },
    #[error("settings file {path}: key `{key}`: {reason}")]
    Value { path: String, key: String, reason: String },
    /// clap's own error, for flags, environment variables, and what the
    /// file's entries became; its `exit()` prints it with usage.
    #[error("{0}")]
    Arguments(#[from] clap::Error),
}

// === impl SettingsError ===

impl SettingsError {
    /// Prints the error and exits: 0 for `--help` and `--version`, 2 for
    /// any error (clap's usage exit code), so scripts and `ExecStartPre=`
    /// see a bad configuration as such.
    pub fn exit(self) -> ! {
        match self {
            SettingsError::Arguments(error) => error.exit(),
            other => {
                eprintln!("error: {other}");
                std::process::exit(2)
            }
        }
    }
}

/// The arguments a binary runs with, and where each came from.
#[derive(Debug)]
pub struct Loaded<A> {
    pub args: A,
    matches: ArgMatches,
    /// The settings file read, if any.
    pub file: Option<PathBuf>,
}

// === impl Loaded ===

impl<A: CommandFactory> Loaded<A> {
    /// The keys of the settings whose value differs between `self` and
    /// `newer` (the same binary's arguments loaded again), sorted.
    pub fn changed(&self, newer: &Loaded<A>) -> Vec<String> {
        let raw = |matches: &ArgMatches, id: &str| -> Vec<OsString> {
            matches
                .try_get_raw(id)
                .ok()
                .flatten()
                .map(|values| values.map(OsStr::to_owned).collect())
                .unwrap_or_default()
        };
        let mut changed: Vec<String> = A::command()
            .get_arguments()
            .filter(|arg| raw(&self.matches, arg.get_id().as_str()) != raw(&newer.matches, arg.get_id().as_str()))
            .filter_map(key_of)
            .collect();
        changed.sort();
        changed
    }
}

/// Parses `argv` (program name first) into `A`, reading the settings file
/// named by `A`'s `config` argument (a flag or its environment variable)
/// when there is one.
pub fn load<A: CommandFactory + FromArgMatches>(argv: &[OsString]) -> Result<Loaded<A>, SettingsError> {
    let command = A::command();
    // A first pass only finds the file and what the command line and the
    // environment already set; a setting that is required may be in the
    // file, so errors wait for the second pass.
    let first = command.clone().ignore_errors(true).try_get_matches_from(argv)?;
    let file = first.try_get_one::<PathBuf>("config").ok().flatten().cloned();
    let mut full_argv: Vec<OsString> = argv.iter().take(1).cloned().collect();
    let mut from_file = Vec::new();
    if let Some(path) = &file {
        let text = std::fs::read_to_string(path)
            .map_err(|source| SettingsError::Read { path: path.display().to_string(), source })?;
        let given =
            |id: &str| matches!(first.value_source(id), Some(ValueSource::CommandLine | ValueSource::EnvVariable));
        from_file = file_flags(&command, path, &text, given)?;
        full_argv.extend(from_file.iter().map(|(_, flag)| flag.clone()));
    }
    full_argv.extend(argv.iter().skip(1).cloned());
    let matches = match command.clone().try_get_matches_from(&full_argv) {
        Ok(matches) => matches,
        Err(error) => return Err(blame_file(&command, file.as_deref(), &from_file, error)),
    };
    let args = A::from_arg_matches(&matches)?;
    Ok(Loaded { args, matches, file })
}

/// Turns clap's refusal of a value that came from the file into an error
/// naming the file and the key, not a flag the user never typed.
fn blame_file(
    command: &Command,
    file: Option<&Path>,
    from_file: &[(String, OsString)],
    error: clap::Error,
) -> SettingsError {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let (Some(path), ErrorKind::InvalidValue | ErrorKind::ValueValidation) = (file, error.kind()) else {
        return SettingsError::Arguments(error);
    };
    let Some(ContextValue::String(invalid_arg)) = error.get(ContextKind::InvalidArg) else {
        return SettingsError::Arguments(error);
    };
    let flag = invalid_arg.split_whitespace().next().unwrap_or_default();
    let blamed = command.get_arguments().find(|arg| {
        arg.get_long().is_some_and(|long| flag == format!("--{long}"))
            && from_file.iter().any(|(id, _)| arg.get_id() == id.as_str())
    });
    let Some(key) = blamed.and_then(key_of) else { return SettingsError::Arguments(error) };
    let value = match error.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(value)) => format!("{value:?}"),
        _ => "the value".to_owned(),
    };
    let reason = match std::error::Error::source(&error) {
        Some(source) => format!("{value} is not valid: {source}"),
        None => format!("{value} is not valid"),
    };
    SettingsError::Value { path: path.display().to_string(), key, reason }
}

/// The file key of a flag: its long name in snake_case (`--tls-name` is
/// `tls_name`); none for flags that are not keys.
fn key_of(arg: &Arg) -> Option<String> {
    let key = arg.get_long()?.replace('-', "_");
    (!NOT_KEYS.contains(&key.as_str())).then_some(key)
}

/// The flags that the file's entries stand for, each with its key, leaving
/// out the settings for which `given` says the command line or the
/// environment has a value.
fn file_flags(
    command: &Command,
    path: &Path,
    text: &str,
    given: impl Fn(&str) -> bool,
) -> Result<Vec<(String, OsString)>, SettingsError> {
    let path_text = path.display().to_string();
    let table: toml::Table = text.parse().map_err(|error: toml::de::Error| SettingsError::Syntax {
        path: path_text.clone(),
        reason: error.to_string(),
    })?;
    let keys: BTreeMap<String, &Arg> = command.get_arguments().filter_map(|arg| Some((key_of(arg)?, arg))).collect();
    let mut flags = Vec::new();
    for (key, value) in &table {
        let Some(&arg) = keys.get(key.as_str()) else {
            let hint = closest(key, keys.keys()).map(|near| format!(" (did you mean `{near}`?)")).unwrap_or_default();
            return Err(SettingsError::UnknownKey { path: path_text, key: key.clone(), hint });
        };
        let value_error = |reason: String| SettingsError::Value { path: path_text.clone(), key: key.clone(), reason };
        let values = scalars(value).map_err(value_error)?;
        if given(arg.get_id().as_str()) {
            continue;
        }
        let long = arg.get_long().expect("keys are the arguments with a long flag");
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            match value {
                toml::Value::Boolean(true) => {
                    flags.push((arg.get_id().to_string(), OsString::from(format!("--{long}"))))
                }
                toml::Value::Boolean(false) => {}
                _ => return Err(value_error("must be true or false".to_owned())),
            }
            continue;
        }
        let takes_many = matches!(arg.get_action(), ArgAction::Append);
        if values.len() != 1 && !takes_many {
            return Err(value_error(format!("takes one value, got a list of {}", values.len())));
        }
        for text in values {
            flags.push((arg.get_id().to_string(), OsString::from(format!("--{long}={text}"))));
        }
    }
    Ok(flags)
}

/// The text of a scalar, or of each element of an array of scalars.
fn scalars(value: &toml::Value) -> Result<Vec<String>, String> {
    let scalar = |value: &toml::Value| match value {
        toml::Value::String(text) => Ok(text.clone()),
        toml::Value::Integer(number) => Ok(number.to_string()),
        toml::Value::Float(number) => Ok(number.to_string()),
        toml::Value::Boolean(flag) => Ok(flag.to_string()),
        toml::Value::Datetime(_) => Err("a date is not a setting; write the value as a string".to_owned()),
        toml::Value::Array(_) | toml::Value::Table(_) => {
            Err("must be a string, a number, a boolean or a list of them".to_owned())
        }
    };
    match value {
        toml::Value::Array(items) => items.iter().map(scalar).collect(),
        other => Ok(vec![scalar(other)?]),
    }
}

/// The known key nearest to a misspelt one, if one is close (at most a
/// third of its letters differ).
fn closest<'a>(key: &str, keys: impl Iterator<Item = &'a String>) -> Option<&'a str> {
    keys.map(|candidate| (edit_distance(key, candidate), candidate.as_str()))
        .filter(|&(distance, _)| distance * 3 <= key.len().max(3))
        .min()
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance over bytes; keys are ASCII.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (a_idx, &a_byte) in a.iter().enumerate() {
        let mut current = vec![a_idx + 1];
        for (b_idx, &b_byte) in b.iter().enumerate() {
            let substitution = previous[b_idx] + usize::from(a_byte != b_byte);
            current.push(substitution.min(previous[b_idx + 1] + 1).min(current[b_idx] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests;
