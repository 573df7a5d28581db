//! How often a PeftModel walks its model: the layer index it keeps means save, load and the reports
//! read what they need from one walk instead of one walk each.
#![allow(clippy::unwrap_used)]

mod common;

use common::{config, model, Mlp};
use peft_core::layer::AdaptableLayer;
use peft_core::{Adaptable, LoadOptions, MethodConfig, PeftModel, Result, SaveOptions};
use std::cell::Cell;

/// `Mlp`, counting every walk over its layers.
struct Counting {
    inner: Mlp,
    walks: Cell<usize>,
}

impl Adaptable for Counting {
    fn visit_layers(&self, f: &mut dyn FnMut(&dyn AdaptableLayer)) {
        self.walks.set(self.walks.get() + 1);
        self.inner.visit_layers(f)
    }
    fn visit_layers_mut(&mut self, f: &mut dyn FnMut(&mut dyn AdaptableLayer) -> Result<()>) -> Result<()> {
        self.walks.set(self.walks.get() + 1);
        self.inner.visit_layers_mut(f)
    }
}

fn walks(p: &PeftModel<Counting>) -> usize {
    p.model().walks.get()
}

#[test]
fn saves_and_reports_after_a_load_read_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let (vs, m) = model();
    PeftModel::new(m, &vs, config(&["lin0", "lin2"]).boxed(), "default")
        .unwrap()
        .save_pretrained(dir.path(), &SaveOptions::default())
        .unwrap();

    let (vs, m) = model();
    let counting = Counting { inner: m, walks: Cell::new(0) };
    let (mut p, _) = PeftModel::from_pretrained(counting, &vs, dir.path(), LoadOptions::default()).unwrap();
    let load = walks(&p);
    // Before the index, loading walked the model 16 times; now injection walks it, the load reads the
    // index built once, and activation tells the layers which adapters run.
    assert!(load <= 9, "from_pretrained walked the model {load} times");

    let before = walks(&p);
    let out = tempfile::tempdir().unwrap();
    p.save_pretrained(out.path(), &SaveOptions::default()).unwrap();
    let _ = p.layer_status();
    let _ = p.model_status();
    let _ = p.named_parameters();
    let _ = p.num_parameters();
    let _ = p.targeted_modules("default");
    assert_eq!(walks(&p) - before, 0, "the index the load built serves saves and reports");

    // A change through the model drops the index; the next report walks once more.
    let _ = p.model_mut();
    let before = walks(&p);
    let _ = p.layer_status();
    let _ = p.layer_status();
    assert_eq!(walks(&p) - before, 1);
}
