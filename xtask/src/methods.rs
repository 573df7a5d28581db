//! The one source of truth for which methods peft-rs ships: each method crate's own `Cargo.toml`.
//!
//! A method crate declares the PEFT types it provides once, in its manifest:
//!
//! ```toml
//! [package.metadata.peft]
//! peft-types = ["DEFT"]
//! ```
//!
//! Everything else that lists methods is derived from that declaration:
//!
//! * generated (`cargo xtask sync-methods` rewrites them; `cargo xtask lint` fails when they drifted): the
//!   method crates' workspace dependencies in the root `Cargo.toml`, the umbrella crate's features and
//!   optional dependencies (`crates/peft/Cargo.toml`), its re-exports and linked set
//!   (`crates/peft/src/methods.rs`), and the `SHIPPED` / `PLANNED` marks and crate names of the registry's
//!   table of PEFT types (`crates/peft-core/src/registry.rs`);
//! * checked (written by people, so only checked): a row of the README's method status table and a line of
//!   its layout per method crate, and the method crate's mention in ARCHITECTURE.md's crate map and in a
//!   section of its own.
//!
//! The checks are pure functions over the files' text ([`Sources`]), so the tests below can prove that a
//! drifted list fails without touching the repository.

use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

/// A method crate, as its manifest declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MethodCrate {
    /// The package name (`peft-trainable-tokens`).
    pub package: String,
    /// Its directory under `crates/`.
    pub dir: String,
    /// The PEFT types it registers (`["TRAINABLE_TOKENS"]`).
    pub peft_types: Vec<String>,
}

impl MethodCrate {
    /// The umbrella feature and module name stem (`trainable-tokens`).
    pub fn feature(&self) -> &str {
        self.package.strip_prefix("peft-").unwrap_or(&self.package)
    }

    /// The Rust identifier of the crate (`peft_trainable_tokens`).
    pub fn ident(&self) -> String {
        self.package.replace('-', "_")
    }

    /// The umbrella's module name for it (`trainable_tokens`).
    pub fn module(&self) -> String {
        self.feature().replace('-', "_")
    }

    /// The constant the crate exports to name its type(s): `PEFT_TYPE`, or `PEFT_TYPES` for several.
    fn type_const(&self) -> &'static str {
        if self.peft_types.len() == 1 {
            "PEFT_TYPE"
        } else {
            "PEFT_TYPES"
        }
    }
}

/// Every method crate under `root/crates`, sorted by package name.
///
/// # Errors
/// An unreadable or malformed manifest, or a `peft-types` entry that is not a list of strings.
pub fn discover(root: &Path) -> Result<Vec<MethodCrate>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(root.join("crates")).context("reading crates/")? {
        let dir = entry?.path();
        let manifest = dir.join("Cargo.toml");
        if !manifest.is_file() {
            continue;
        }
        let text =
            fs::read_to_string(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
        if let Some(m) = parse_manifest(&text, &dir).with_context(|| format!("in {}", manifest.display()))? {
            out.push(m);
        }
    }
    out.sort_by(|a, b| a.package.cmp(&b.package));
    Ok(out)
}

/// The method a crate manifest declares, if it declares one.
fn parse_manifest(text: &str, dir: &Path) -> Result<Option<MethodCrate>> {
    let doc: toml::Table = text.parse().context("not valid TOML")?;
    let package = doc.get("package").and_then(|p| p.as_table()).context("no [package]")?;
    let name = package.get("name").and_then(|n| n.as_str()).context("no package.name")?;
    let Some(types) = package.get("metadata").and_then(|m| m.get("peft")).and_then(|p| p.get("peft-types"))
    else {
        return Ok(None);
    };
    let types = types.as_array().context("package.metadata.peft.peft-types must be a list")?;
    let peft_types = types
        .iter()
        .map(|t| {
            t.as_str().map(str::to_string).context("package.metadata.peft.peft-types holds a non-string")
        })
        .collect::<Result<Vec<_>>>()?;
    if peft_types.is_empty() {
        bail!("package.metadata.peft.peft-types is empty");
    }
    let dir = dir.file_name().and_then(|d| d.to_str()).unwrap_or_default().to_string();
    Ok(Some(MethodCrate { package: name.to_string(), dir, peft_types }))
}

/// The files that list methods, as text.
#[derive(Clone, Debug)]
pub struct Sources {
    /// `Cargo.toml`.
    pub root_manifest: String,
    /// `crates/peft/Cargo.toml`.
    pub umbrella_manifest: String,
    /// `crates/peft/src/methods.rs`.
    pub umbrella_methods: String,
    /// `crates/peft-core/src/registry.rs`.
    pub registry: String,
    /// `README.md`.
    pub readme: String,
    /// `docs/ARCHITECTURE.md`.
    pub architecture: String,
}

const ROOT_MANIFEST: &str = "Cargo.toml";
const UMBRELLA_MANIFEST: &str = "crates/peft/Cargo.toml";
const UMBRELLA_METHODS: &str = "crates/peft/src/methods.rs";
const REGISTRY: &str = "crates/peft-core/src/registry.rs";
const README: &str = "README.md";
const ARCHITECTURE: &str = "docs/ARCHITECTURE.md";

impl Sources {
    /// Reads them from the repository at `root`.
    ///
    /// # Errors
    /// A file that cannot be read (a missing `methods.rs` reads as empty: it is generated).
    pub fn read(root: &Path) -> Result<Self> {
        let read = |p: &str| fs::read_to_string(root.join(p)).with_context(|| format!("reading {p}"));
        Ok(Self {
            root_manifest: read(ROOT_MANIFEST)?,
            umbrella_manifest: read(UMBRELLA_MANIFEST)?,
            umbrella_methods: read(UMBRELLA_METHODS).unwrap_or_default(),
            registry: read(REGISTRY)?,
            readme: read(README)?,
            architecture: read(ARCHITECTURE)?,
        })
    }
}

const BEGIN: &str = "# BEGIN method crates (generated by `cargo xtask sync-methods` from each crate's [package.metadata.peft])";
const END: &str = "# END method crates";

/// Replaces the lines between the `index`-th BEGIN/END marker pair of `text` with `body`.
fn replace_block(text: &str, index: usize, body: &str, file: &str) -> Result<String> {
    let mut out = String::new();
    let mut seen = 0;
    let mut inside = false;
    let mut replaced = false;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        if trimmed == BEGIN {
            if inside {
                bail!("{file}: a `{BEGIN}` marker inside another block");
            }
            out.push_str(line);
            if seen == index {
                inside = true;
                out.push_str(body);
                replaced = true;
            }
            seen += 1;
            continue;
        }
        if trimmed == END {
            inside = false;
            out.push_str(line);
            continue;
        }
        if !inside {
            out.push_str(line);
        }
    }
    if inside {
        bail!("{file}: a `{BEGIN}` marker without its `{END}`");
    }
    if !replaced {
        bail!("{file}: marker block {} (`{BEGIN}` … `{END}`) is missing", index + 1);
    }
    Ok(out)
}

/// The root manifest with its method-crate workspace dependencies regenerated.
fn root_manifest(methods: &[MethodCrate], text: &str) -> Result<String> {
    let body: String = methods
        .iter()
        .map(|m| format!("{} = {{ path = \"crates/{}\", version = \"0.1.0\" }}\n", m.package, m.dir))
        .collect();
    replace_block(text, 0, &body, ROOT_MANIFEST)
}

/// The umbrella manifest with its features (block 1) and optional dependencies (block 2) regenerated.
fn umbrella_manifest(methods: &[MethodCrate], text: &str) -> Result<String> {
    let defaults: Vec<String> = methods.iter().map(|m| format!("\"{}\"", m.feature())).collect();
    let mut features = format!("default = [{}]\n", defaults.join(", "));
    for m in methods {
        features.push_str(&format!("{} = [\"dep:{}\"]\n", m.feature(), m.package));
    }
    let deps: String = methods
        .iter()
        .map(|m| format!("{} = {{ workspace = true, optional = true }}\n", m.package))
        .collect();
    let text = replace_block(text, 0, &features, UMBRELLA_MANIFEST)?;
    replace_block(&text, 1, &deps, UMBRELLA_MANIFEST)
}

/// `crates/peft/src/methods.rs`, whole.
fn umbrella_methods(methods: &[MethodCrate]) -> String {
    let mut s = String::from(
        "// @generated by `cargo xtask sync-methods` from each method crate's `[package.metadata.peft]`;\n\
         // do not edit (`cargo xtask lint` fails when this file and the crates disagree).\n\n",
    );
    for m in methods {
        s.push_str(&format!(
            "#[cfg(feature = \"{}\")]\npub use {} as {};\n",
            m.feature(),
            m.ident(),
            m.module()
        ));
    }
    s.push_str(
        "\n/// The `peft_type`s of the methods linked into this program, sorted.\npub fn linked_methods() -> \
         Vec<&'static str> {\n    // Referencing each crate keeps it (and its registration) linked.\n",
    );
    for m in methods {
        s.push_str(&format!(
            "    #[cfg(feature = \"{}\")]\n    let _ = {}::{};\n",
            m.feature(),
            m.ident(),
            m.type_const()
        ));
    }
    s.push_str("    peft_core::registry::registered().iter().map(|r| r.peft_type).collect()\n}\n");
    s
}

/// One row of the registry's table: `row("DEFT", "DeftModel", "peft-deft", SHIPPED),`.
#[derive(Debug)]
struct RegistryRow {
    peft_type: String,
    tuner_class: String,
}

fn parse_registry_row(line: &str) -> Option<RegistryRow> {
    let rest = line.trim().strip_prefix("row(\"")?;
    let parts: Vec<&str> = rest.split('"').collect();
    // TYPE, `, `, CLASS, `, `, CRATE, `, FLAG),`
    if parts.len() < 6 {
        return None;
    }
    Some(RegistryRow { peft_type: parts[0].to_string(), tuner_class: parts[2].to_string() })
}

/// The registry with each row's crate and `SHIPPED`/`PLANNED` mark regenerated; an error for a declared
/// type the table lacks (it lists PEFT's types, so that is a typo).
fn registry(methods: &[MethodCrate], text: &str) -> Result<String> {
    let mut out = String::new();
    let mut seen = Vec::new();
    for line in text.split_inclusive('\n') {
        let Some(row) = parse_registry_row(line) else {
            out.push_str(line);
            continue;
        };
        let provider = methods.iter().find(|m| m.peft_types.contains(&row.peft_type));
        let planned = format!("peft-{}", row.peft_type.to_ascii_lowercase().replace('_', "-"));
        let (krate, flag) = match provider {
            Some(m) => (m.package.clone(), "SHIPPED"),
            None => (planned, "PLANNED"),
        };
        let indent: String = line.chars().take_while(|c| c.is_whitespace()).collect();
        out.push_str(&format!(
            "{indent}row(\"{}\", \"{}\", \"{krate}\", {flag}),\n",
            row.peft_type, row.tuner_class
        ));
        seen.push(row.peft_type);
    }
    for m in methods {
        for t in &m.peft_types {
            if !seen.contains(t) {
                bail!(
                    "{}: declares peft_type {t:?}, which is not a PEFT 0.21.2 type ({REGISTRY})",
                    m.package
                );
            }
        }
    }
    Ok(out)
}

/// The generated files as they should be: `(path, expected text)`.
fn generated(methods: &[MethodCrate], s: &Sources) -> Result<Vec<(&'static str, String)>> {
    Ok(vec![
        (ROOT_MANIFEST, root_manifest(methods, &s.root_manifest)?),
        (UMBRELLA_MANIFEST, umbrella_manifest(methods, &s.umbrella_manifest)?),
        (UMBRELLA_METHODS, umbrella_methods(methods)),
        (REGISTRY, registry(methods, &s.registry)?),
    ])
}

/// The README's method status table: the rows between `## Status of methods` and the next heading.
fn status_rows(readme: &str) -> Vec<&str> {
    let mut inside = false;
    let mut rows = Vec::new();
    for line in readme.lines() {
        if line.starts_with("## ") {
            inside = line.trim() == "## Status of methods";
            continue;
        }
        if inside && line.starts_with('|') {
            rows.push(line);
        }
    }
    rows
}

/// Every way the files disagree with the method crates (empty: all in agreement).
///
/// # Errors
/// A generated file whose markers are broken, or a crate that declares an unknown type.
pub fn drift(methods: &[MethodCrate], s: &Sources) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let current = [
        (ROOT_MANIFEST, &s.root_manifest),
        (UMBRELLA_MANIFEST, &s.umbrella_manifest),
        (UMBRELLA_METHODS, &s.umbrella_methods),
        (REGISTRY, &s.registry),
    ];
    for ((path, expected), (_, actual)) in generated(methods, s)?.iter().zip(current) {
        if expected != actual {
            let first = expected
                .lines()
                .zip(actual.lines().chain(std::iter::repeat("")))
                .find(|(e, a)| e != a)
                .map(|(e, a)| format!("expected `{}`, found `{}`", e.trim(), a.trim()))
                .unwrap_or_else(|| "lines missing or extra at the end".into());
            out.push(format!(
                "{path} is out of date with the method crates ({first}); run `cargo xtask sync-methods`"
            ));
        }
    }
    let rows = status_rows(&s.readme);
    let arch_map = s.architecture.lines().find(|l| l.starts_with("| `peft-<method>`")).unwrap_or_default();
    for m in methods {
        let tick = format!("`{}`", m.package);
        if !rows.iter().any(|r| r.split('|').nth(2).is_some_and(|c| c.contains(&tick))) {
            out.push(format!("{README}: the method status table has no row for {tick}"));
        }
        if !s.readme.lines().any(|l| l.split_whitespace().any(|w| w == format!("crates/{}", m.dir))) {
            out.push(format!("{README}: the layout lists no `crates/{}`", m.dir));
        }
        if !arch_map.contains(&tick) {
            out.push(format!("{ARCHITECTURE}: the crate map's `peft-<method>` row does not list {tick}"));
        }
        let heading = format!(" in {}", m.package);
        let has_section = s.architecture.lines().any(|l| {
            (l.starts_with("* **") && l.contains(&tick)) || (l.starts_with("##") && l.ends_with(&heading))
        });
        if !has_section {
            out.push(format!(
                "{ARCHITECTURE}: no section for {tick} (a `* **Name** ({tick}): …` bullet or a `### … in {}` heading)",
                m.package
            ));
        }
    }
    for r in &rows {
        let Some(cell) = r.split('|').nth(2) else { continue };
        for word in cell.split('`').skip(1).step_by(2) {
            if word.starts_with("peft-")
                && word != "peft-<method>"
                && !methods.iter().any(|m| m.package == word)
            {
                out.push(format!(
                    "{README}: the method status table names `{word}`, which is no method crate"
                ));
            }
        }
    }
    Ok(out)
}

/// `cargo xtask sync-methods`: rewrites the generated files from the method crates.
///
/// # Errors
/// As [`drift`], or a write failure.
pub fn sync(root: &Path) -> Result<Vec<PathBuf>> {
    let methods = discover(root)?;
    let sources = Sources::read(root)?;
    let mut written = Vec::new();
    for (path, text) in generated(&methods, &sources)? {
        let full = root.join(path);
        if fs::read_to_string(&full).ok().as_deref() != Some(text.as_str()) {
            fs::write(&full, text).with_context(|| format!("writing {path}"))?;
            written.push(full);
        }
    }
    Ok(written)
}

/// The lint step: every drift, one per line, as an error.
///
/// # Errors
/// The drifts found.
pub fn check(root: &Path) -> Result<usize> {
    let methods = discover(root)?;
    let mut problems = drift(&methods, &Sources::read(root)?)?;
    problems.extend(core_method_names(root, &methods)?);
    if !problems.is_empty() {
        bail!("the method lists disagree with the method crates:\n  {}", problems.join("\n  "));
    }
    Ok(methods.len())
}

/// peft-core knows no method: a PEFT type written as a string literal in its sources outside the
/// registry's table (comments aside) is reported, one line per place.
fn core_method_names(root: &Path, methods: &[MethodCrate]) -> Result<Vec<String>> {
    let types: Vec<&str> = methods.iter().flat_map(|m| m.peft_types.iter().map(String::as_str)).collect();
    let mut out = Vec::new();
    let mut stack = vec![root.join("crates/peft-core/src")];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("registry.rs") {
                let text = fs::read_to_string(&path)?;
                let rel = path.strip_prefix(root).unwrap_or(&path).display().to_string();
                out.extend(method_literals(&text, &types).into_iter().map(|(line, t)| {
                    format!(
                        "{rel}:{line}: names the method {t:?}; core reads such needs from the config instead"
                    )
                }));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `(line, type)` for each PEFT type that appears as a whole string literal (`"IA3"`) in code lines.
fn method_literals<'a>(text: &str, types: &[&'a str]) -> Vec<(usize, &'a str)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        for t in types {
            if line.contains(&format!("\"{t}\"")) {
                out.push((i + 1, *t));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_method_name_in_core_code_is_reported_and_comments_are_not() {
        let text = "// \"IA3\" in a comment\nif t != \"IA3\" {}\nlet x = \"IA3X\";\n";
        assert_eq!(method_literals(text, &["IA3", "LORA"]), vec![(2, "IA3")]);
    }

    #[test]
    fn todays_core_names_no_method() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let methods = discover(root).unwrap();
        assert_eq!(core_method_names(root, &methods).unwrap(), Vec::<String>::new());
    }

    fn repo() -> (Vec<MethodCrate>, Sources) {
        let root = crate::root();
        (discover(&root).unwrap(), Sources::read(&root).unwrap())
    }

    #[test]
    fn the_repository_lists_agree_with_the_method_crates() {
        let (methods, sources) = repo();
        assert!(methods.iter().any(|m| m.package == "peft-lora" && m.peft_types == ["LORA"]));
        assert!(methods.iter().all(|m| m.package != "peft-lycoris"), "family crates declare no type");
        assert_eq!(drift(&methods, &sources).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn a_method_missing_from_the_registry_fails() {
        let (methods, mut sources) = repo();
        sources.registry = sources.registry.replace("\"peft-deft\", SHIPPED", "\"peft-deft\", PLANNED");
        let problems = drift(&methods, &sources).unwrap();
        assert!(problems.iter().any(|p| p.contains(REGISTRY) && p.contains("DEFT")), "{problems:?}");
    }

    #[test]
    fn a_crate_missing_from_the_umbrella_fails() {
        let (methods, mut sources) = repo();
        sources.umbrella_manifest = sources.umbrella_manifest.replace("hira = [\"dep:peft-hira\"]\n", "");
        sources.umbrella_methods = sources.umbrella_methods.replace("pub use peft_hira as hira;", "");
        let problems = drift(&methods, &sources).unwrap();
        assert!(problems.iter().any(|p| p.contains(UMBRELLA_MANIFEST)), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains(UMBRELLA_METHODS)), "{problems:?}");
    }

    #[test]
    fn a_new_crate_without_its_lists_fails() {
        let (mut methods, sources) = repo();
        // A method PEFT has and no crate provides yet, as `cargo xtask new-method` would start it.
        let planned = sources.registry.lines().find(|l| l.contains("PLANNED)")).expect("a planned method");
        let parts: Vec<&str> = planned.split('"').collect();
        let (peft_type, package) = (parts[1].to_string(), parts[5].to_string());
        methods.push(MethodCrate {
            package: package.clone(),
            dir: package.clone(),
            peft_types: vec![peft_type],
        });
        methods.sort_by(|a, b| a.package.cmp(&b.package));
        let problems = drift(&methods, &sources).unwrap();
        for file in [ROOT_MANIFEST, UMBRELLA_MANIFEST, UMBRELLA_METHODS, REGISTRY] {
            assert!(problems.iter().any(|p| p.starts_with(file)), "{file}: {problems:?}");
        }
        assert!(
            problems.iter().any(|p| p.contains(&format!("status table has no row for `{package}`"))),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains(&format!("layout lists no `crates/{package}`"))),
            "{problems:?}"
        );
        assert!(problems.iter().any(|p| p.contains("crate map") && p.contains(&package)), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains(&format!("no section for `{package}`"))), "{problems:?}");
    }

    #[test]
    fn a_readme_row_for_a_crate_that_does_not_exist_fails() {
        let (methods, mut sources) = repo();
        sources.readme = sources.readme.replacen(
            "| method | crate | status |\n|---|---|---|\n",
            "| method | crate | status |\n|---|---|---|\n| GhostFT | `peft-ghostft` | ✔ |\n",
            1,
        );
        let problems = drift(&methods, &sources).unwrap();
        assert!(
            problems.iter().any(|p| p.contains("`peft-ghostft`, which is no method crate")),
            "{problems:?}"
        );
    }

    #[test]
    fn an_unknown_declared_type_is_an_error() {
        let (mut methods, sources) = repo();
        methods[0].peft_types.push("NOT_A_TYPE".into());
        let err = drift(&methods, &sources).unwrap_err().to_string();
        assert!(err.contains("NOT_A_TYPE"), "{err}");
    }

    #[test]
    fn manifests_without_metadata_declare_no_method() {
        let dir = Path::new("crates/peft-x");
        assert_eq!(parse_manifest("[package]\nname = \"peft-x\"\n", dir).unwrap(), None);
        let m = parse_manifest(
            "[package]\nname = \"peft-x\"\n[package.metadata.peft]\npeft-types = [\"X\", \"Y\"]\n",
            dir,
        )
        .unwrap()
        .unwrap();
        assert_eq!((m.feature(), m.ident(), m.type_const()), ("x", "peft_x".to_string(), "PEFT_TYPES"));
        assert!(parse_manifest("[package]\nname = \"x\"\n[package.metadata.peft]\npeft-types = []\n", dir)
            .is_err());
    }
}
