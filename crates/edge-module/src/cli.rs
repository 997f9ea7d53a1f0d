//! The command line, derived from the settings type: one `--flag VALUE` per setting and alias
//! ([`crate::layers::settings_of`]), plus `--settings FILE` (also `{PREFIX}SETTINGS`) and
//! `--print-settings`. Flags are the last layer before the module twin: defaults -> file ->
//! environment -> flags. Adding a field to the settings struct adds its flag and variable; nothing
//! else needs declaring.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Arg, ArgAction, Command};

use crate::layers::{
    settings_of, Builder, Layer, Layered, ModuleSettings, Names, Setting, SettingsError,
};

/// What the command line asked for.
#[derive(Debug, Clone)]
pub struct Cli<T> {
    /// The layered settings.
    pub layered: Layered<T>,
    /// `--print-settings`: print the effective settings as JSON and exit.
    pub print_settings: bool,
}

/// `command` (the module's name, version and about text) with an argument per setting.
pub fn command<T: ModuleSettings>(
    command: Command,
    names: &Names,
) -> Result<Command, SettingsError> {
    let settings = settings_of::<T>(names)?;
    let mut cmd = command.arg(
        Arg::new("print-settings")
            .long("print-settings")
            .action(ArgAction::SetTrue)
            .help("Print the effective settings as JSON and exit"),
    );
    if let Some(file_env) = names.file_env() {
        cmd = cmd.arg(
            Arg::new("settings")
                .long("settings")
                .value_name("FILE")
                .env(file_env)
                .value_parser(clap::value_parser!(PathBuf))
                .help("JSON settings file (the JSON names of the settings); environment and flags override it"),
        );
    }
    for s in settings.iter().filter(|s| !s.alias) {
        let aliases: Vec<&Setting> = settings
            .iter()
            .filter(|a| a.alias && a.path == s.path)
            .collect();
        let mut vars: Vec<String> = names
            .env
            .iter()
            .filter(|(_, p)| *p == s.path)
            .map(|(v, _)| (*v).to_string())
            .collect();
        vars.push(s.env(names.env_prefix));
        vars.extend(aliases.iter().map(|a| a.env(names.env_prefix)));
        let text = names
            .help
            .iter()
            .find(|(p, _)| *p == s.path)
            .map_or(String::new(), |(_, h)| format!("{h} "));
        let mut arg = Arg::new(s.path.clone())
            .long(s.flag())
            .value_name("VALUE")
            .allow_negative_numbers(true)
            .help(format!(
                "{text}[JSON `{}`, default {}] [env: {}]",
                s.path,
                s.default,
                vars.join(", ")
            ));
        for a in aliases {
            arg = arg.visible_alias(a.flag());
        }
        cmd = cmd.arg(arg);
    }
    Ok(cmd.after_help(format!(
        "Settings layer: defaults -> --settings FILE -> environment ({}*) -> flags -> (as an IoT Edge \
         module) the module twin's desired properties. A value is JSON when it parses (50, true, null), \
         else text.",
        names.env_prefix
    )))
}

/// Parses the process's arguments and environment; prints help, version or a usage error and exits
/// as clap does.
pub fn parse<T: ModuleSettings>(cmd: Command, names: &Names) -> Result<Cli<T>, SettingsError> {
    let cmd = command::<T>(cmd, names)?;
    let matches = cmd.get_matches();
    from_matches(&matches, names, std::env::vars_os())
}

/// [`parse`] over given arguments and environment; a usage error (or `--help`) is returned as clap's error.
pub fn try_parse_from<T: ModuleSettings>(
    cmd: Command,
    names: &Names,
    args: impl IntoIterator<Item = OsString>,
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<Result<Cli<T>, SettingsError>, clap::Error> {
    let cmd = match command::<T>(cmd, names) {
        Ok(c) => c,
        Err(e) => return Ok(Err(e)),
    };
    let matches = cmd.try_get_matches_from(args)?;
    Ok(from_matches(&matches, names, vars))
}

/// The settings from `matches` of a [`command`] the module extended with arguments of its own (which
/// it reads from the same matches), and the environment `vars`.
pub fn from_matches<T: ModuleSettings>(
    matches: &clap::ArgMatches,
    names: &Names,
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<Cli<T>, SettingsError> {
    let mut b = Builder::<T>::new()?;
    let file = names
        .file_env()
        .and_then(|_| matches.get_one::<PathBuf>("settings"));
    if let Some(file) = file {
        b.file(file)?;
    }
    b.env(names, vars)?;
    let settings = settings_of::<T>(names)?;
    for s in settings.iter().filter(|s| !s.alias) {
        if let Some(v) = matches.get_one::<String>(&s.path) {
            // the flag and its aliases: `duration-s/--duration`
            let flags: Vec<String> = settings
                .iter()
                .filter(|a| a.path == s.path)
                .map(Setting::flag)
                .collect();
            b.set(s, v, Layer::Flag(flags.join("/--")))?;
        }
    }
    Ok(Cli {
        layered: b.build()?,
        print_settings: matches.get_flag("print-settings"),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct S {
        /// Default 1.
        port: u16,
        /// Default none.
        duration_s: Option<f64>,
    }
    impl Default for S {
        fn default() -> Self {
            S {
                port: 1,
                duration_s: None,
            }
        }
    }
    impl ModuleSettings for S {}

    const NAMES: Names = Names {
        env_prefix: "T_",
        aliases: &[("duration", "duration_s")],
        env: &[("OTHER_PORT", "port")],
        file: true,
        help: &[("port", "The port.")],
    };

    fn run(args: &[&str], vars: &[(&str, &str)]) -> Result<Cli<S>, SettingsError> {
        try_parse_from(
            Command::new("t"),
            &NAMES,
            std::iter::once("t")
                .chain(args.iter().copied())
                .map(OsString::from),
            vars.iter().map(|(k, v)| (k.into(), v.into())),
        )
        .unwrap()
    }

    #[test]
    fn flags_win_over_the_environment() {
        let c = run(&["--port", "3", "--duration", "2.5"], &[("T_PORT", "2")]).unwrap();
        assert_eq!(c.layered.settings().port, 3);
        assert_eq!(c.layered.settings().duration_s, Some(2.5));
        assert!(!c.print_settings);
        let c = run(&["--print-settings"], &[("OTHER_PORT", "4")]).unwrap();
        assert_eq!(c.layered.settings().port, 4);
        assert!(c.print_settings);
    }

    #[test]
    fn a_bad_flag_value_names_the_flag() {
        let e = run(&["--port", "x"], &[]).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("--port") && m.contains("`port`"), "{m}");
    }

    #[test]
    fn help_lists_every_setting() {
        let mut cmd = command::<S>(Command::new("t"), &NAMES).unwrap();
        let help = cmd.render_help().to_string();
        for f in [
            "--port",
            "--duration-s",
            "--duration",
            "--settings",
            "--print-settings",
            "OTHER_PORT",
            "T_PORT",
        ] {
            assert!(help.contains(f), "{f} missing from\n{help}");
        }
    }
}
