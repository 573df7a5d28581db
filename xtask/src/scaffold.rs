//! `cargo xtask new-method NAME --peft-type TYPE [--title TITLE]`: a new method crate, wired in.
//!
//! It writes `crates/peft-NAME` (manifest with the `[package.metadata.peft]` declaration, build script,
//! `config.rs`, `layer.rs`, `lib.rs`, behaviour tests) and the oracle rows file
//! `tests/oracle/method_NAME.py`, then regenerates the method lists (`sync-methods`) and adds the crate's
//! README rows and ARCHITECTURE entries, marked as a scaffold. The crate compiles and registers its type;
//! its layer refuses every base until the method's math is written, and the parity harness picks up its
//! rows file as soon as it has rows. ARCHITECTURE's recipe walks one method from here to green parity.

use anyhow::{bail, Context, Result};
use std::fs;
use std::path::Path;

/// What the scaffold is made from.
#[derive(Clone, Debug)]
pub struct NewMethod {
    /// Crate suffix: `waveft` → `peft-waveft`.
    pub name: String,
    /// PEFT's type: `WAVEFT`.
    pub peft_type: String,
    /// The method's name as written in prose (`WaveFT`).
    pub title: String,
}

impl NewMethod {
    /// Parses `NAME --peft-type TYPE [--title TITLE]`.
    ///
    /// # Errors
    /// Missing or malformed arguments.
    pub fn from_args(args: &[String]) -> Result<Self> {
        let mut name = None;
        let mut peft_type = None;
        let mut title = None;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--peft-type" => peft_type = it.next().cloned(),
                "--title" => title = it.next().cloned(),
                s if s.starts_with("--") => bail!("new-method: unknown option `{s}`"),
                s => name = Some(s.to_string()),
            }
        }
        let usage = "usage: cargo xtask new-method NAME --peft-type TYPE [--title TITLE]";
        let name = name.context(usage)?;
        let peft_type = peft_type.context(usage)?;
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            bail!("new-method: NAME must be lower-case letters, digits and `-` (the crate is `peft-NAME`), not {name:?}");
        }
        if !peft_type.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') {
            bail!("new-method: TYPE must be PEFT's upper-case peft_type (`WAVEFT`), not {peft_type:?}");
        }
        let title = title.unwrap_or_else(|| camel(&name));
        Ok(Self { name, peft_type, title })
    }

    fn package(&self) -> String {
        format!("peft-{}", self.name)
    }

    fn ident(&self) -> String {
        self.package().replace('-', "_")
    }

    fn camel(&self) -> String {
        camel(&self.name)
    }

    /// The files of the new crate and its rows file: `(path relative to the root, text)`.
    pub fn files(&self) -> Vec<(String, String)> {
        let fill = |t: &str| {
            t.replace("{package}", &self.package())
                .replace("{ident}", &self.ident())
                .replace("{name}", &self.name)
                .replace("{TYPE}", &self.peft_type)
                .replace("{Camel}", &self.camel())
                .replace("{title}", &self.title)
        };
        let dir = format!("crates/{}", self.package());
        vec![
            (format!("{dir}/Cargo.toml"), fill(MANIFEST)),
            (format!("{dir}/build.rs"), fill(BUILD)),
            (format!("{dir}/src/lib.rs"), fill(LIB)),
            (format!("{dir}/src/config.rs"), fill(CONFIG)),
            (format!("{dir}/src/layer.rs"), fill(LAYER)),
            (format!("{dir}/tests/behaviour.rs"), fill(BEHAVIOUR)),
            (format!("tests/oracle/method_{}.py", self.name.replace('-', "_")), fill(ROWS)),
        ]
    }
}

fn camel(name: &str) -> String {
    name.split('-')
        .map(|p| {
            let mut c = p.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .collect()
}

/// Writes the scaffold into the repository at `root` and wires it in.
///
/// # Errors
/// An existing crate or rows file, a type that is not PEFT's or is shipped already, a write failure.
pub fn create(root: &Path, m: &NewMethod) -> Result<()> {
    let registry = fs::read_to_string(root.join("crates/peft-core/src/registry.rs"))?;
    let row = registry
        .lines()
        .find(|l| l.trim().starts_with(&format!("row(\"{}\",", m.peft_type)))
        .with_context(|| format!("new-method: {:?} is not one of PEFT 0.21.2's peft_types", m.peft_type))?;
    if row.contains("SHIPPED") {
        bail!("new-method: {} is shipped already ({})", m.peft_type, row.trim());
    }
    for (path, _) in m.files() {
        if root.join(&path).exists() {
            bail!("new-method: {path} exists already");
        }
    }
    for (path, text) in m.files() {
        let full = root.join(&path);
        if let Some(parent) = full.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&full, text).with_context(|| format!("writing {path}"))?;
    }
    crate::methods::sync(root)?;
    let readme_path = root.join("README.md");
    let readme = fs::read_to_string(&readme_path)?;
    fs::write(&readme_path, add_readme_rows(&readme, m)?)?;
    let arch_path = root.join("docs/ARCHITECTURE.md");
    let arch = fs::read_to_string(&arch_path)?;
    fs::write(&arch_path, add_architecture_entries(&arch, m)?)?;
    Ok(())
}

/// The README with the scaffold's status row (before the catch-all `peft-<method>` row) and layout line
/// (before `crates/peft-testkit`).
fn add_readme_rows(readme: &str, m: &NewMethod) -> Result<String> {
    let status = format!(
        "| {} | `{}` | 🚧 scaffold (`cargo xtask new-method`): registered, layers not written yet |\n",
        m.title,
        m.package()
    );
    let layout = format!("{:<20} {} (scaffold)\n", format!("crates/{}", m.package()), m.title);
    let mut out = String::new();
    let (mut did_status, mut did_layout) = (false, false);
    for line in readme.split_inclusive('\n') {
        if !did_status && line.starts_with('|') && line.contains("`peft-<method>`") {
            out.push_str(&status);
            did_status = true;
        }
        if !did_layout && line.starts_with("crates/peft-testkit") {
            out.push_str(&layout);
            did_layout = true;
        }
        out.push_str(line);
    }
    if !did_status || !did_layout {
        bail!("README.md: no catch-all `peft-<method>` status row or no `crates/peft-testkit` layout line to insert before");
    }
    Ok(out)
}

/// ARCHITECTURE.md with the crate in the crate map's method list (kept sorted) and a bullet at the end of
/// "The other method crates".
fn add_architecture_entries(arch: &str, m: &NewMethod) -> Result<String> {
    let tick = format!("`{}`", m.package());
    let bullet = format!(
        "* **{}** ({tick}): scaffolded by `cargo xtask new-method`; what is particular to it goes here.\n\n",
        m.title
    );
    let mut out = String::new();
    let (mut did_map, mut did_bullet) = (false, false);
    let mut in_others = false;
    for line in arch.split_inclusive('\n') {
        if line.starts_with("| `peft-<method>`") {
            let (head, list) =
                line.split_once("Method crates: ").context("crate map row without `Method crates: `")?;
            let (list, tail) =
                list.split_once(". |").context("crate map row's list does not end with `. |`")?;
            let mut names: Vec<String> = list.split(", ").map(str::to_string).collect();
            names.push(tick.clone());
            names.sort();
            out.push_str(&format!("{head}Method crates: {}. |{tail}", names.join(", ")));
            did_map = true;
            continue;
        }
        if line.starts_with("### The other method crates") {
            in_others = true;
        } else if in_others && line.starts_with("## ") {
            out.push_str(&bullet);
            did_bullet = true;
            in_others = false;
        }
        out.push_str(line);
    }
    if !did_map || !did_bullet {
        bail!("docs/ARCHITECTURE.md: no crate map `peft-<method>` row or no `### The other method crates` section");
    }
    Ok(out)
}

const MANIFEST: &str = r#"[package]
name = "{package}"
description = "{title} for peft-rs, numerically identical to HuggingFace PEFT 0.21.2, same adapter files."
version.workspace = true
edition.workspace = true
rust-version.workspace = true
license.workspace = true
repository.workspace = true

# The PEFT types this crate provides: the source of truth `cargo xtask sync-methods` derives every method
# list from (the registry table, the umbrella crate, the checks on README and ARCHITECTURE).
[package.metadata.peft]
peft-types = ["{TYPE}"]

[dependencies]
peft-core.workspace = true
tch.workspace = true
serde.workspace = true
serde_json.workspace = true
log.workspace = true
inventory.workspace = true

[dev-dependencies]
peft-testkit.workspace = true
tempfile.workspace = true

[build-dependencies]
peft-build.workspace = true

[lints]
workspace = true
"#;

const BUILD: &str = r#"//! Gives this package's binaries, tests and examples an rpath to libtorch (see `peft-build`).

fn main() {
    peft_build::link_libtorch();
}
"#;

const LIB: &str = r##"//! {title} for peft-rs — HuggingFace PEFT 0.21.2's `{TYPE}` on tch, with the same numbers and the same
//! files.
//!
//! * [`{Camel}Config`]: every key of PEFT's config class and its checks.
//! * [`{Camel}Layer`]: the method on the layers PEFT supports for it.
//!
//! Linking this crate registers `peft_type: "{TYPE}"`, so adapter directories saved by PEFT load by file
//! alone with `PeftModel::from_pretrained`.
//!
//! ```
//! use {ident}::{{Camel}Config, MethodConfig};
//!
//! let mut warnings = Vec::new();
//! let config = {Camel}Config::from_json_str(r#"{"peft_type": "{TYPE}", "target_modules": ["q_proj"]}"#, &mut warnings)?;
//! assert_eq!(config.common.peft_type, "{TYPE}");
//! # Ok::<(), peft_core::PeftError>(())
//! ```

pub mod config;
pub mod layer;

pub use config::{{Camel}Config, PEFT_TYPE};
pub use layer::{Camel}Layer;
pub use peft_core::MethodConfig;

peft_core::register_method!(config::{Camel}Config, "{package}");
"##;

const CONFIG: &str = r#"//! `{Camel}Config`: PEFT 0.21.2's keys, defaults and checks.

use peft_core::config::LayerInit;
use peft_core::peft_config::targets::dedupe_lists;
use peft_core::peft_config::{LayerIndices, LayersPattern, PeftConfigCommon, TargetModules};
use peft_core::{AdapterConfig, LayerMethod, MethodConfig, Result, TunerLayer};
use serde::{Deserialize, Serialize};

/// `peft_type` of {title}.
pub const PEFT_TYPE: &str = "{TYPE}";

/// PEFT 0.21.2's config class for `{TYPE}`, field for field: add every key PEFT's dataclass has, with its
/// default and value form (`peft_config::Num` for numbers PEFT keeps as written, `BiasOption` for `bias`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct {Camel}Config {
    /// `peft_type`, `task_type`, `base_model_name_or_path`, `revision`, `inference_mode`, …
    #[serde(flatten)]
    pub common: PeftConfigCommon,
    /// Modules to adapt: names / dotted suffixes, a full-match regex, or `"all-linear"`.
    pub target_modules: Option<TargetModules>,
    /// Modules never to adapt.
    pub exclude_modules: Option<TargetModules>,
    /// Only the layers with these indices are adapted.
    pub layers_to_transform: Option<LayerIndices>,
    /// The name of the layer list `layers_to_transform` indexes into.
    pub layers_pattern: Option<LayersPattern>,
    /// Extra modules trained and saved in full.
    pub modules_to_save: Option<Vec<String>>,
}

impl Default for {Camel}Config {
    fn default() -> Self {
        Self {
            common: PeftConfigCommon::new(PEFT_TYPE),
            target_modules: None,
            exclude_modules: None,
            layers_to_transform: None,
            layers_pattern: None,
            modules_to_save: None,
        }
    }
}

impl MethodConfig for {Camel}Config {
    const PEFT_TYPE: &'static str = PEFT_TYPE;

    /// PEFT's `__post_init__`: target lists become sets; the layer-selection rules.
    fn post_init(&mut self, location: &str, _warnings: &mut Vec<String>) -> Result<()> {
        dedupe_lists([&mut self.target_modules, &mut self.exclude_modules]);
        Ok(self.target_spec().check_layer_selection(location)?)
    }
}

impl AdapterConfig for {Camel}Config {
    peft_core::adapter_config_boilerplate!();
    peft_core::adapter_config_targets!(
        target_modules,
        exclude_modules,
        layers_to_transform,
        layers_pattern,
        modules_to_save
    );

    fn validate(&self) -> Result<()> {
        Ok(self.target_spec().check_layer_selection(peft_core::peft_config::error::IN_MEMORY)?)
    }
}

impl LayerMethod for {Camel}Config {
    fn create_layer(&mut self, ctx: &mut LayerInit<'_, '_>) -> Result<Box<dyn TunerLayer>> {
        crate::layer::{Camel}Layer::create(self, ctx).map(|l| Box::new(l) as Box<dyn TunerLayer>)
    }
}
"#;

const LAYER: &str = r#"//! `{Camel}Layer`: one {title} adapter on one layer. State the forward formula and every shape here.

use crate::config::{{Camel}Config, PEFT_TYPE};
use peft_core::config::LayerInit;
use peft_core::layer::{BaseLayer, MergeCtx, TunerLayer};
use peft_core::{PeftError, Result};
use tch::Tensor;

/// One {title} adapter on one layer.
#[derive(Debug)]
pub struct {Camel}Layer {
    adapter: String,
    module: String,
}

impl {Camel}Layer {
    /// Creates the adapter as PEFT's `update_layer` does, replaying its initialisation draws in order.
    ///
    /// # Errors
    /// [`PeftError::UnsupportedLayer`] for every base until the method is written.
    pub fn create(config: &mut {Camel}Config, ctx: &mut LayerInit<'_, '_>) -> Result<Self> {
        let _ = config;
        Err(ctx.unsupported(PEFT_TYPE, "the layers of this method are not written yet (a `cargo xtask new-method` scaffold)"))
    }
}

impl TunerLayer for {Camel}Layer {
    fn peft_type(&self) -> &'static str {
        PEFT_TYPE
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }

    fn merge(&mut self, _base: &mut dyn BaseLayer, _ctx: &MergeCtx<'_>) -> Result<()> {
        Err(PeftError::Invalid(format!("`{}`: {} merges are not written yet", self.module, PEFT_TYPE)))
    }

    fn unmerge(&mut self, _base: &mut dyn BaseLayer) -> Result<()> {
        Err(PeftError::Invalid(format!("`{}`: {} unmerges are not written yet", self.module, PEFT_TYPE)))
    }

    fn describe(&self) -> String {
        format!("{name}.Layer(adapter={})", self.adapter)
    }
}
"#;

const BEHAVIOUR: &str = r##"//! {title} behaviour beyond the parity matrix (identity at init where PEFT's default is the identity,
//! merged == unmerged on non-trivial weights, refused layers and options, NaN-safe merges, shape mismatches
//! on load — see `peft_testkit`'s checks).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use {ident}::{{Camel}Config, MethodConfig};

#[test]
fn the_config_round_trips_through_peft_json() {
    let mut warnings = Vec::new();
    let config = {Camel}Config::from_json_str(r#"{"peft_type": "{TYPE}", "target_modules": ["lin0"]}"#, &mut warnings).unwrap();
    let text = peft_core::config::to_config_file_text(&config);
    let again = {Camel}Config::from_json_str(&text, &mut warnings).unwrap();
    assert_eq!(config, again);
    assert!(warnings.is_empty(), "{warnings:?}");
}
"##;

const ROWS: &str = r#""""{TYPE} rows of the method parity matrix (see gen_methods.py for what each table means).

Add rows as the layers are written, e.g.
    dict(method="{TYPE}", name="{name}_mlp", model="MLP", adapters={"default": dict(target_modules=["lin0", "lin1"])})
"""

CASES = []

# Same-seed initialisation: base model and adapter created under torch.manual_seed(0).
INIT_CASES = []

# A few optimizer steps from a saved initial adapter.
TRAIN_CASES = []

# adapter_config.json files written by PEFT, parsed and written back byte for byte.
CONFIG_CASES = []
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NewMethod {
        NewMethod::from_args(&[
            "wave-ft".into(),
            "--peft-type".into(),
            "WAVEFT".into(),
            "--title".into(),
            "WaveFT".into(),
        ])
        .unwrap()
    }

    #[test]
    fn arguments_are_checked() {
        assert!(NewMethod::from_args(&["waveft".into()]).is_err());
        assert!(NewMethod::from_args(&["WaveFT".into(), "--peft-type".into(), "WAVEFT".into()]).is_err());
        assert!(NewMethod::from_args(&["waveft".into(), "--peft-type".into(), "waveft".into()]).is_err());
        let m = NewMethod::from_args(&["wave-ft".into(), "--peft-type".into(), "WAVEFT".into()]).unwrap();
        assert_eq!(
            (m.package(), m.ident(), m.camel(), m.title),
            ("peft-wave-ft".into(), "peft_wave_ft".into(), "WaveFt".into(), "WaveFt".into())
        );
    }

    #[test]
    fn the_templates_are_filled_completely() {
        let m = sample();
        let files = m.files();
        assert_eq!(files.len(), 7);
        for (path, text) in &files {
            for hole in ["{package}", "{ident}", "{name}", "{TYPE}", "{Camel}", "{title}"] {
                assert!(!text.contains(hole), "{path} keeps {hole}");
            }
        }
        assert!(files[0].1.contains("peft-types = [\"WAVEFT\"]"));
        assert!(files[6].0 == "tests/oracle/method_wave_ft.py");
    }

    #[test]
    fn the_scaffold_is_listed_where_the_lint_looks() {
        let root = crate::root();
        let m = sample();
        let readme = add_readme_rows(&fs::read_to_string(root.join("README.md")).unwrap(), &m).unwrap();
        let arch =
            add_architecture_entries(&fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap(), &m)
                .unwrap();
        let mut methods = crate::methods::discover(&root).unwrap();
        methods.push(crate::methods::MethodCrate {
            package: m.package(),
            dir: m.package(),
            peft_types: vec![m.peft_type.clone()],
        });
        methods.sort_by(|a, b| a.package.cmp(&b.package));
        let mut sources = crate::methods::Sources::read(&root).unwrap();
        sources.readme = readme;
        sources.architecture = arch;
        let problems = crate::methods::drift(&methods, &sources).unwrap();
        // Only the generated files are left for sync-methods to write.
        assert!(problems.iter().all(|p| p.contains("run `cargo xtask sync-methods`")), "{problems:?}");
    }
}
