//! Parameter groups from settings: several methods in one optimizer, per-group hyperparameters,
//! gradient clipping — in Rust or from a JSON file (`ember-bench --groups FILE`).
//!
//! ```json
//! {
//!   "groups": [
//!     {"name": "mlp",  "params": ["mlp"],  "method": "fira", "rank": 128},
//!     {"name": "attn", "params": ["attn"], "method": "dct",  "rank": 128},
//!     {"name": "no-decay", "params": [":1d", "embedding"], "method": "adamw", "weight_decay": 0.0}
//!   ],
//!   "default": {"method": "adamw", "state_dtype": "int8", "weight_decay": 0.1},
//!   "clipping": {"global_norm": 1.0}
//! }
//! ```
//!
//! A parameter belongs to the **first** group whose `params` select it (path patterns, globs,
//! predicates `:1d`, `:2d`, `:norm`, `:bias`; see [`ember_core::Targets`]), else to `default`
//! (AdamW with the method defaults when absent). In a group, 2-D parameters run the group's
//! method and other shapes the method's AdamW (what the single-method configs do with the
//! parameters they do not target). Every setting left out is the method's default (the official
//! package's). A setting the method does not have (`density` on GaLore, `rank` on AdamW) is an
//! error naming the group, and so is a group that selects nothing at the first step.

use std::path::Path;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use ember_core::{
    Clipping, EmberOptimizer, EngineConfig, Group, NonFinitePolicy, StateDtype, Targets,
};
use serde::{Deserialize, Serialize};

use crate::recipe::Method;

/// The settings of one group; `None` = the method's default.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    /// Name (in plans and errors).
    #[serde(default)]
    pub name: String,
    /// Selector: path patterns, globs and predicates (`:1d`, `:2d`, `:norm`, `:bias`); ignored
    /// (must be empty) for the default group.
    #[serde(default)]
    pub params: Vec<String>,
    /// `adamw`, `galore`, `fira`, `frugal`, `dct` or `qgalore` (default `adamw`).
    #[serde(default)]
    pub method: Option<String>,
    /// Rank (GaLore, Fira, DCT, Q-GaLore).
    #[serde(default)]
    pub rank: Option<usize>,
    /// Density ρ (FRUGAL).
    #[serde(default)]
    pub density: Option<f64>,
    /// Update scale α (GaLore, Fira, Q-GaLore).
    #[serde(default)]
    pub scale: Option<f64>,
    /// Decoupled weight decay λ.
    #[serde(default)]
    pub weight_decay: Option<f64>,
    /// Learning-rate multiplier (default 1).
    #[serde(default)]
    pub lr_scale: Option<f64>,
    /// `f32`, `bf16` or `int8` (blockwise 8-bit).
    #[serde(default)]
    pub state_dtype: Option<String>,
    /// Steps between projector refreshes (every method but AdamW).
    #[serde(default)]
    pub update_proj_gap: Option<usize>,
    /// Refresh on the device (GaLore, Fira, FRUGAL, Q-GaLore).
    #[serde(default)]
    pub device_projector: Option<bool>,
    /// Exact SVD on the host on every backend (GaLore, Fira, FRUGAL; default: on CPU backends,
    /// the device projector on GPU backends).
    #[serde(default)]
    pub host_svd: Option<bool>,
    /// Every parameter of the group on the method's AdamW (no projection; e.g. a no-decay
    /// group of the method's dense parameters).
    #[serde(default)]
    pub dense: Option<bool>,
}

/// Clipping as written in a groups file: `{"value": v}`, `{"norm": v}` (per tensor, as burn's
/// `GradientClippingConfig`) or `{"global_norm": v}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ClippingSpec {
    /// Each entry into `[−v, v]`.
    Value(f64),
    /// Each tensor to norm ≤ `v`.
    Norm(f64),
    /// All gradients together to norm ≤ `v`.
    GlobalNorm(f64),
}

impl From<ClippingSpec> for Clipping {
    fn from(c: ClippingSpec) -> Self {
        match c {
            ClippingSpec::Value(v) => Clipping::Value(v),
            ClippingSpec::Norm(v) => Clipping::Norm(v),
            ClippingSpec::GlobalNorm(v) => Clipping::GlobalNorm(v),
        }
    }
}

/// Groups, the default group and clipping: a whole optimizer.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupsConfig {
    /// The groups, first match wins.
    pub groups: Vec<GroupSpec>,
    /// The rest (default: AdamW with its defaults).
    #[serde(default)]
    pub default: Option<GroupSpec>,
    /// Gradient clipping before the update.
    #[serde(default)]
    pub clipping: Option<ClippingSpec>,
}

impl GroupSpec {
    /// A group `name` of `method` over the parameters `params` selects.
    pub fn new(name: &str, method: Method, params: &[&str]) -> Self {
        Self {
            name: name.into(),
            params: params.iter().map(|p| p.to_string()).collect(),
            method: Some(method.name().into()),
            ..Self::default()
        }
    }

    /// Sets the rank.
    pub fn with_rank(mut self, rank: usize) -> Self {
        self.rank = Some(rank);
        self
    }

    /// Sets FRUGAL's density.
    pub fn with_density(mut self, density: f64) -> Self {
        self.density = Some(density);
        self
    }

    /// Sets α.
    pub fn with_scale(mut self, scale: f64) -> Self {
        self.scale = Some(scale);
        self
    }

    /// Sets the weight decay.
    pub fn with_weight_decay(mut self, weight_decay: f64) -> Self {
        self.weight_decay = Some(weight_decay);
        self
    }

    /// Sets the learning-rate multiplier.
    pub fn with_lr_scale(mut self, lr_scale: f64) -> Self {
        self.lr_scale = Some(lr_scale);
        self
    }

    /// Sets the state storage.
    pub fn with_state_dtype(mut self, state: StateDtype) -> Self {
        self.state_dtype = Some(state.name().into());
        self
    }

    /// Sets the refresh gap.
    pub fn with_update_proj_gap(mut self, gap: usize) -> Self {
        self.update_proj_gap = Some(gap);
        self
    }

    /// Sets where projectors are refreshed.
    pub fn with_device_projector(mut self, on: bool) -> Self {
        self.device_projector = Some(on);
        self
    }

    /// The method.
    pub fn method(&self) -> Result<Method, String> {
        match &self.method {
            None => Ok(Method::Adamw),
            Some(m) => Method::parse(m).map_err(|e| format!("group `{}`: {e}", self.name)),
        }
    }

    /// The state storage.
    pub fn state(&self) -> Result<Option<StateDtype>, String> {
        self.state_dtype
            .as_deref()
            .map(|s| match s {
                "f32" => Ok(StateDtype::F32),
                "bf16" => Ok(StateDtype::Bf16),
                "int8" => Ok(StateDtype::Int8Blockwise),
                other => Err(format!(
                    "group `{}`: unknown state_dtype `{other}` (f32, bf16 or int8)",
                    self.name
                )),
            })
            .transpose()
    }

    /// Sets the group dense (the method's AdamW for every parameter).
    pub fn with_dense(mut self, dense: bool) -> Self {
        self.dense = Some(dense);
        self
    }

    /// The settings this group sets that its method (or a dense group) does not have.
    fn foreign_settings(&self, m: Method) -> Vec<&'static str> {
        let mut v = vec![];
        if self.dense == Some(true) {
            for (set, name) in [
                (self.rank.is_some(), "rank"),
                (self.density.is_some(), "density"),
                (self.scale.is_some(), "scale"),
                (self.update_proj_gap.is_some(), "update_proj_gap"),
                (self.device_projector.is_some(), "device_projector"),
                (self.host_svd.is_some(), "host_svd"),
            ] {
                if set {
                    v.push(name);
                }
            }
            return v;
        }
        if self.rank.is_some() && !m.has_rank() {
            v.push("rank");
        }
        if self.density.is_some() && m != Method::Frugal {
            v.push("density");
        }
        if self.scale.is_some() && !m.has_scale() {
            v.push("scale");
        }
        if self.update_proj_gap.is_some() && m == Method::Adamw {
            v.push("update_proj_gap");
        }
        if self.device_projector == Some(true) && !m.has_device_projector() {
            v.push("device_projector");
        }
        if self.host_svd.is_some() && !matches!(m, Method::Galore | Method::Fira | Method::Frugal) {
            v.push("host_svd");
        }
        v
    }

    /// The group's pipelines: (2-D parameters, other shapes), or why the settings do not fit.
    pub fn engines(&self) -> Result<(EngineConfig, EngineConfig), String> {
        let m = self.method()?;
        let foreign = self.foreign_settings(m);
        if !foreign.is_empty() {
            return Err(format!(
                "group `{}`: {}{} has no {} setting",
                self.name,
                m.name(),
                if self.dense == Some(true) {
                    " (dense)"
                } else {
                    ""
                },
                foreign.join(", ")
            ));
        }
        if let Some(s) = self.lr_scale {
            if !(s.is_finite() && s >= 0.0) {
                return Err(format!(
                    "group `{}`: lr_scale {s} must be finite and ≥ 0",
                    self.name
                ));
            }
        }
        let state = self.state()?;
        let dp = self.device_projector.unwrap_or(false);
        let hs = self.host_svd.unwrap_or(false);
        macro_rules! set {
            ($c:expr, $($field:ident <- $value:expr),*) => {{
                let mut c = $c;
                $( if let Some(v) = $value { c.$field = v; } )*
                c
            }};
        }
        let wd = self.weight_decay;
        let (engine, dense) = match m {
            Method::Adamw => {
                let c = set!(crate::galore::GaloreConfig::new(), weight_decay <- wd, state_dtype <- state);
                (c.dense_engine(), c.dense_engine())
            }
            Method::Galore => {
                let c = set!(crate::galore::GaloreConfig::new(), rank <- self.rank,
                    scale <- self.scale, weight_decay <- wd, state_dtype <- state,
                    update_proj_gap <- self.update_proj_gap);
                let c = c.with_device_projector(dp).with_host_svd(hs);
                (c.engine(), c.dense_engine())
            }
            Method::Fira => {
                let c = set!(crate::fira::FiraConfig::new(), rank <- self.rank,
                    alpha <- self.scale, weight_decay <- wd, state_dtype <- state,
                    update_proj_gap <- self.update_proj_gap);
                let c = c.with_device_projector(dp).with_host_svd(hs);
                (c.engine(), c.dense_engine())
            }
            Method::Frugal => {
                let c = set!(crate::frugal::FrugalConfig::new(), density <- self.density,
                    weight_decay <- wd, state_dtype <- state, update_gap <- self.update_proj_gap);
                let c = c.with_device_projector(dp).with_host_svd(hs);
                (c.engine(), c.dense_engine())
            }
            Method::Dct => {
                let c = set!(crate::dct::DctConfig::new(), rank <- self.rank,
                    weight_decay <- wd, state_dtype <- state,
                    update_proj_gap <- self.update_proj_gap);
                (c.engine(), c.dense_engine())
            }
            Method::Qgalore => {
                let c = set!(crate::qgalore::QGaloreConfig::new(), rank <- self.rank,
                    scale <- self.scale, weight_decay <- wd, state_dtype <- state,
                    update_proj_gap <- self.update_proj_gap);
                let c = c.with_device_projector(dp);
                (c.engine(), c.dense_engine())
            }
        };
        Ok(if self.dense == Some(true) {
            (dense.clone(), dense)
        } else {
            (engine, dense)
        })
    }

    /// The engine-level group.
    pub fn group(&self) -> Result<Group, String> {
        let (engine, dense) = self.engines()?;
        let selector = if self.params.is_empty() {
            Targets::default()
        } else {
            Targets::patterns(self.params.clone())
        };
        selector
            .validate()
            .map_err(|e| format!("group `{}`: {e}", self.name))?;
        Ok(Group {
            name: self.name.clone(),
            selector,
            engine,
            dense,
            lr_scale: self.lr_scale.unwrap_or(1.0),
        })
    }
}

/// What a group does to one parameter (for estimates): its method, rank or density (the
/// method's default where the group sets none), state storage, and whether it projects.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resolved {
    /// The method.
    pub method: Method,
    /// Rank (methods with one).
    pub rank: Option<usize>,
    /// FRUGAL's density.
    pub density: Option<f64>,
    /// State storage.
    pub state: StateDtype,
    /// Whether 2-D parameters of the group are projected (not dense, not AdamW).
    pub projects: bool,
}

impl GroupSpec {
    /// The group's settings with the method's defaults filled in.
    pub fn resolved(&self) -> Result<Resolved, String> {
        let method = self.method()?;
        let rank = match method {
            Method::Galore => Some(self.rank.unwrap_or(crate::galore::GaloreConfig::new().rank)),
            Method::Fira => Some(self.rank.unwrap_or(crate::fira::FiraConfig::new().rank)),
            Method::Dct => Some(self.rank.unwrap_or(crate::dct::DctConfig::new().rank)),
            Method::Qgalore => Some(
                self.rank
                    .unwrap_or(crate::qgalore::QGaloreConfig::new().rank),
            ),
            Method::Adamw | Method::Frugal => None,
        };
        let density = (method == Method::Frugal).then(|| {
            self.density
                .unwrap_or(crate::frugal::FrugalConfig::new().density)
        });
        Ok(Resolved {
            method,
            rank,
            density,
            state: self.state()?.unwrap_or_default(),
            projects: method != Method::Adamw && self.dense != Some(true),
        })
    }
}

impl GroupsConfig {
    /// The group of a parameter (first match wins; the default group otherwise), by its module
    /// path and shape.
    pub fn route(&self, path: &str, shape: &[usize]) -> GroupSpec {
        self.groups
            .iter()
            .find(|g| {
                g.params
                    .iter()
                    .any(|p| ember_core::targets::selector_matches(p, path, shape))
            })
            .cloned()
            .unwrap_or_else(|| {
                let mut d = self.default.clone().unwrap_or_default();
                if d.name.is_empty() {
                    d.name = "default".into();
                }
                d
            })
    }

    /// No groups: everything in the default group (AdamW).
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a group (after the ones before: first match wins).
    pub fn with_group(mut self, group: GroupSpec) -> Self {
        self.groups.push(group);
        self
    }

    /// Sets the default group (its `params` must be empty).
    pub fn with_default(mut self, group: GroupSpec) -> Self {
        self.default = Some(group);
        self
    }

    /// Sets the clipping.
    pub fn with_clipping(mut self, clipping: Option<ClippingSpec>) -> Self {
        self.clipping = clipping;
        self
    }

    /// Parses a groups file's text.
    pub fn from_json(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| format!("groups file: {e}"))
    }

    /// Reads a groups file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, String> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the groups file {}: {e}", path.display()))?;
        Self::from_json(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The engine-level groups and default group, checked: names unique and non-empty, every
    /// group with a selector, no two groups with the same selector, the default without one.
    pub fn resolve(&self) -> Result<(Vec<Group>, Group), String> {
        let mut groups = vec![];
        for (k, spec) in self.groups.iter().enumerate() {
            if spec.name.is_empty() {
                return Err(format!("group {} has no name", k + 1));
            }
            if self.groups[..k].iter().any(|g| g.name == spec.name) || spec.name == "default" {
                return Err(format!("group `{}`: the name is taken", spec.name));
            }
            if spec.params.is_empty() {
                return Err(format!(
                    "group `{}`: empty selector (`params` lists no pattern)",
                    spec.name
                ));
            }
            if let Some(g) = self.groups[..k].iter().find(|g| {
                let mut a = g.params.clone();
                let mut b = spec.params.clone();
                a.sort();
                b.sort();
                a == b
            }) {
                return Err(format!(
                    "group `{}`: same selector as group `{}` (which takes all of its parameters)",
                    spec.name, g.name
                ));
            }
            groups.push(spec.group()?);
        }
        let mut default = self.default.clone().unwrap_or_default();
        if !default.params.is_empty() {
            return Err(
                "the default group takes every parameter no group selects: it has no \
                        `params`"
                    .into(),
            );
        }
        if default.name.is_empty() {
            default.name = "default".into();
        }
        Ok((groups, default.group()?))
    }

    /// Builds the optimizer.
    pub fn build<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
    ) -> Result<EmberOptimizer<M, B>, String> {
        self.build_with(NonFinitePolicy::Error)
    }

    /// Builds the optimizer with a non-finite policy.
    pub fn build_with<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        non_finite: NonFinitePolicy,
    ) -> Result<EmberOptimizer<M, B>, String> {
        let (groups, default) = self.resolve()?;
        EmberOptimizer::with_groups(groups, default, non_finite)
            .and_then(|o| o.with_clipping(self.clipping.map(Clipping::from)))
            .map_err(|e| e.to_string())
    }
}
