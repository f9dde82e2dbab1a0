//! Which parameters get the low-rank pipeline and which fall back to AdamW.
//!
//! A parameter is a **target** when it is 2-D and either its [`ParamId`] was given with
//! [`Targets::with_ids`], or its module path (the field names from the root module, joined by
//! dots, e.g. `layers.3.attn.query.weight`) matches one of the patterns:
//!
//! * a pattern without `*` matches when it is a **substring** of the path — the official GaLore
//!   scripts select modules this way (`["attn", "mlp"]`);
//! * a pattern with `*` is a glob over the whole path (`*` matches any run of characters, dots
//!   included): `layers.*.attn.*.weight`.
//!
//! * a pattern starting with `:` is a **predicate**: `:1d` (fewer than 2 dimensions: norm gains,
//!   biases), `:2d`, `:norm` (a path containing `norm`), `:bias` (a path ending in `bias`).
//!
//! A parameter is selected when its id was given, or any pattern or predicate matches it (an
//! unknown predicate is an error at [`Targets::validate`]). With no ids and no patterns, every 2-D
//! parameter is a target. Everything else (embeddings or the
//! LM head when excluded, norms, biases, tensors that are not 2-D) is optimized by the method's
//! AdamW inside the same optimizer, with the same hyperparameters.

use burn::module::ParamId;
use std::collections::HashSet;

/// The set of targeted parameters.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    patterns: Vec<String>,
    ids: HashSet<ParamId>,
    max_dim: Option<usize>,
    none: bool,
}

impl Targets {
    /// Every 2-D parameter.
    pub fn all_2d() -> Self {
        Self::default()
    }

    /// No parameter (the optimizer is then the method's AdamW on everything).
    pub fn none() -> Self {
        Self {
            none: true,
            ..Self::default()
        }
    }

    /// Parameters whose path matches one of `patterns` (see the module docs).
    pub fn patterns<S: Into<String>>(patterns: impl IntoIterator<Item = S>) -> Self {
        Self {
            patterns: patterns.into_iter().map(Into::into).collect(),
            ids: HashSet::new(),
            max_dim: None,
            none: false,
        }
    }

    /// Excludes matrices with a dimension `≥ max_dim` (DCT-AdamW's `max_shape`: embeddings and
    /// LM heads of a 32000-token vocabulary stay on AdamW).
    pub fn with_max_dim(mut self, max_dim: usize) -> Self {
        self.max_dim = Some(max_dim);
        self
    }

    /// Adds path patterns (see the module docs).
    pub fn with_patterns<S: Into<String>>(mut self, patterns: impl IntoIterator<Item = S>) -> Self {
        self.patterns.extend(patterns.into_iter().map(Into::into));
        self
    }

    /// The patterns, predicates and ids that select no parameter among `params` (`(path, id,
    /// shape)` of every parameter of the model): a typo would otherwise leave every parameter on
    /// AdamW silently.
    pub fn unmatched<'a>(
        &self,
        params: impl IntoIterator<Item = (&'a str, ParamId, &'a [usize])> + Clone,
    ) -> Vec<String> {
        let mut out: Vec<String> = self
            .patterns
            .iter()
            .filter(|p| {
                !params
                    .clone()
                    .into_iter()
                    .any(|(path, _, shape)| selector_matches(p, path, shape))
            })
            .map(|p| format!("pattern `{p}`"))
            .collect();
        out.extend(
            self.ids
                .iter()
                .filter(|id| !params.clone().into_iter().any(|(_, i, _)| i == **id))
                .map(|id| format!("parameter id {id}")),
        );
        out
    }

    /// Adds parameters by id.
    pub fn with_ids(mut self, ids: impl IntoIterator<Item = ParamId>) -> Self {
        self.ids.extend(ids);
        self
    }

    /// Whether the parameter is selected (by id, pattern or predicate; `max_dim` applies to
    /// 2-D shapes).
    pub fn selects_shaped(&self, id: ParamId, path: &str, shape: &[usize]) -> bool {
        if self.none {
            return false;
        }
        if shape.len() == 2 && self.max_dim.is_some_and(|d| shape[0] >= d || shape[1] >= d) {
            return false;
        }
        if self.patterns.is_empty() && self.ids.is_empty() {
            return true;
        }
        self.ids.contains(&id)
            || self
                .patterns
                .iter()
                .any(|p| selector_matches(p, path, shape))
    }

    /// Whether the 2-D-ness aside, the parameter is selected (patterns and ids; predicates need
    /// the shape: [`selects_shaped`](Self::selects_shaped)).
    pub fn selects(&self, id: ParamId, path: &str) -> bool {
        if self.none {
            return false;
        }
        if self.patterns.is_empty() && self.ids.is_empty() {
            return true;
        }
        self.ids.contains(&id)
            || self
                .patterns
                .iter()
                .any(|p| !p.starts_with(':') && pattern_matches(p, path))
    }

    /// Whether a parameter of this shape, id and path gets the low-rank pipeline.
    pub fn is_target(&self, id: ParamId, path: &str, shape: &[usize]) -> bool {
        shape.len() == 2 && self.selects_shaped(id, path, shape)
    }

    /// Checks the predicates' names.
    pub fn validate(&self) -> Result<(), String> {
        for p in &self.patterns {
            if p.starts_with(':') && !PREDICATES.contains(&p.as_str()) {
                return Err(format!(
                    "unknown predicate `{p}` (one of {})",
                    PREDICATES.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// Whether no parameter can be selected.
    pub fn is_none(&self) -> bool {
        self.none
    }
}

/// The predicates a pattern may name.
pub const PREDICATES: [&str; 4] = [":1d", ":2d", ":norm", ":bias"];

/// A pattern or predicate against a parameter's path and shape.
pub fn selector_matches(pattern: &str, path: &str, shape: &[usize]) -> bool {
    match pattern {
        ":1d" => shape.len() < 2,
        ":2d" => shape.len() == 2,
        ":norm" => path.contains("norm"),
        ":bias" => path.ends_with("bias"),
        p if p.starts_with(':') => false,
        p => pattern_matches(p, path),
    }
}

/// Substring match, or a `*` glob over the whole path.
pub fn pattern_matches(pattern: &str, path: &str) -> bool {
    if !pattern.contains('*') {
        return path.contains(pattern);
    }
    glob(pattern.as_bytes(), path.as_bytes())
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    // iterative wildcard matching with backtracking on the last '*'
    let (mut i, mut j) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while j < s.len() {
        if i < p.len() && p[i] != b'*' && p[i] == s[j] {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == b'*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(st) = star {
            i = st + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    while i < p.len() && p[i] == b'*' {
        i += 1;
    }
    i == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substring_and_glob_patterns() {
        assert!(pattern_matches("attn", "layers.0.attn.query.weight"));
        assert!(!pattern_matches("mlp", "layers.0.attn.query.weight"));
        assert!(pattern_matches(
            "layers.*.attn.*.weight",
            "layers.10.attn.query.weight"
        ));
        assert!(!pattern_matches(
            "layers.*.attn.*.weight",
            "layers.10.attn.query.bias"
        ));
        assert!(pattern_matches("*", "anything"));
    }

    #[test]
    fn only_2d_parameters_are_targets() {
        let t = Targets::patterns(["attn"]);
        let id = ParamId::new();
        assert!(t.is_target(id, "attn.weight", &[4, 4]));
        assert!(!t.is_target(id, "attn.bias", &[4]));
        assert!(!t.is_target(id, "embed.weight", &[4, 4]));
        assert!(Targets::all_2d().is_target(id, "embed.weight", &[4, 4]));
        assert!(Targets::default()
            .with_ids([id])
            .is_target(id, "x", &[2, 3]));
    }
}
