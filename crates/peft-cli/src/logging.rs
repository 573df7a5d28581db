//! The log backend of `peft`: every `log` record of the libraries (PeftModel's warnings about unknown
//! config keys, corrected options, fresh task heads, quantized fallbacks, …) goes to stderr, one
//! `level: message` line each, so stdout carries only results.
//!
//! The level is chosen by `-q` (errors only) or `-v` (`-v` info, `-vv` debug, `-vvv` trace); without
//! either, by `RUST_LOG` in env_logger's common form (`warn`, `peft_core=debug`, `info,hf_hub=off`: a
//! comma-separated list of `level` or `target=level`, the longest matching target prefix deciding); else
//! warnings and errors are shown.

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Levels by target prefix.
#[derive(Debug, PartialEq)]
pub(crate) struct Filter {
    default: LevelFilter,
    targets: Vec<(String, LevelFilter)>,
}

impl Filter {
    /// A filter showing `level` for every target.
    pub(crate) fn all(level: LevelFilter) -> Self {
        Filter { default: level, targets: Vec::new() }
    }

    /// Parses a `RUST_LOG` value.
    ///
    /// # Errors
    /// An unknown level, named with the directive.
    pub(crate) fn parse(spec: &str) -> Result<Self, String> {
        let mut filter = Filter::all(LevelFilter::Warn);
        let level = |s: &str| {
            s.trim().parse::<LevelFilter>().map_err(|_| {
                format!("RUST_LOG: unknown level {s:?} (off, error, warn, info, debug, trace) in {spec:?}")
            })
        };
        for directive in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            match directive.split_once('=') {
                Some((target, lvl)) => filter.targets.push((target.trim().to_string(), level(lvl)?)),
                // A bare word is a level if it parses as one, else a target shown at every level.
                None => match directive.parse::<LevelFilter>() {
                    Ok(l) => filter.default = l,
                    Err(_) => filter.targets.push((directive.to_string(), LevelFilter::Trace)),
                },
            }
        }
        // Longest prefix first, so the most specific directive decides.
        filter.targets.sort_by_key(|(t, _)| std::cmp::Reverse(t.len()));
        Ok(filter)
    }

    /// The level shown for records of `target` (a module path such as `peft_core::model`).
    pub(crate) fn level_for(&self, target: &str) -> LevelFilter {
        self.targets
            .iter()
            .find(|(t, _)| {
                target == t || target.strip_prefix(t.as_str()).is_some_and(|rest| rest.starts_with("::"))
            })
            .map_or(self.default, |(_, l)| *l)
    }

    /// The most verbose level any target shows.
    fn max(&self) -> LevelFilter {
        self.targets.iter().map(|(_, l)| *l).chain([self.default]).max().unwrap_or(LevelFilter::Warn)
    }
}

struct StderrLogger(Filter);

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.0.level_for(metadata.target())
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let tag = match record.level() {
            Level::Error => "error",
            Level::Warn => "warning",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        };
        // One line per record, as for errors; a failed write to stderr has nowhere to be reported.
        let text = record.args().to_string().replace('\n', " ");
        let _ =
            std::io::Write::write_all(&mut std::io::stderr().lock(), format!("{tag}: {text}\n").as_bytes());
    }

    fn flush(&self) {}
}

/// The filter the flags and `RUST_LOG` choose.
///
/// # Errors
/// A `RUST_LOG` that does not parse.
pub(crate) fn filter(quiet: bool, verbose: u8, rust_log: Option<&str>) -> Result<Filter, String> {
    Ok(match (quiet, verbose, rust_log) {
        (true, _, _) => Filter::all(LevelFilter::Error),
        (false, 1, _) => Filter::all(LevelFilter::Info),
        (false, 2, _) => Filter::all(LevelFilter::Debug),
        (false, 3.., _) => Filter::all(LevelFilter::Trace),
        (false, 0, Some(spec)) => Filter::parse(spec)?,
        (false, 0, None) => Filter::all(LevelFilter::Warn),
    })
}

/// Installs the stderr logger.
///
/// # Errors
/// A `RUST_LOG` that does not parse.
pub(crate) fn init(quiet: bool, verbose: u8) -> Result<(), String> {
    let rust_log = std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty());
    let filter = filter(quiet, verbose, rust_log.as_deref())?;
    log::set_max_level(filter.max());
    // Only fails when a logger is already installed, which `main` does not do twice.
    let _ = log::set_logger(Box::leak(Box::new(StderrLogger(filter))));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_directives_choose_levels_by_the_longest_target_prefix() {
        let f = Filter::parse("info,peft_core=debug,peft_core::model=error,hf_hub=off").unwrap();
        assert_eq!(f.level_for("peft_cli"), LevelFilter::Info);
        assert_eq!(f.level_for("peft_core::layer"), LevelFilter::Debug);
        assert_eq!(f.level_for("peft_core::model::checkpoint"), LevelFilter::Error);
        assert_eq!(f.level_for("hf_hub::api"), LevelFilter::Off);
        // A prefix matches whole path segments only.
        assert_eq!(f.level_for("peft_core_extra"), LevelFilter::Info);
        assert_eq!(Filter::parse("").unwrap(), Filter::all(LevelFilter::Warn));
        assert_eq!(Filter::parse("peft_models").unwrap().level_for("peft_models::hub"), LevelFilter::Trace);
        let err = Filter::parse("peft_core=loud").unwrap_err();
        assert!(err.contains("RUST_LOG") && err.contains("loud"), "{err}");
    }

    #[test]
    fn flags_win_over_rust_log() {
        assert_eq!(filter(true, 0, Some("trace")).unwrap(), Filter::all(LevelFilter::Error));
        assert_eq!(filter(false, 1, Some("error")).unwrap(), Filter::all(LevelFilter::Info));
        assert_eq!(filter(false, 0, Some("debug")).unwrap(), Filter::all(LevelFilter::Debug));
        assert_eq!(filter(false, 0, None).unwrap(), Filter::all(LevelFilter::Warn));
    }
}
