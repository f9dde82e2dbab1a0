//! Which cuBLAS algorithm runs a GEMM signature: timed once, on the device, among
//! `cublasGemmEx`'s default and cuBLASLt's heuristic candidates — **opt-in**
//! (`EMBER_CUBLASLT=tune`); by default every GEMM is `cublasGemmEx` with `CUBLAS_GEMM_DEFAULT`.
//!
//! Why it exists: `cublasGemmEx` takes one heuristic's first choice, which looked like a poor fit
//! for the down projection `R = PᵀG` of a 4096 × 11008 layer at r = 512 (256 × 128 tiles, 172 on
//! 132 SMs; `docs/perf-notes.md`). Measured on the H100 (2026-11-25, "cuBLAS algorithms timed per
//! GEMM signature"): cuBLASLt's candidates did not beat the default on the projections' own
//! products (the down product 0.207 ms at best against 0.213, the update GEMM 0.231 against
//! 0.226) and gained up to 30% only on the device projector's small fit products. Why it is not
//! the default: the choice is a timing, so two processes may choose differently and round
//! differently — the same run would not repeat bit for bit, and the kernel checks that compare
//! a sign of a residual across two products of different signatures (FRUGAL's signSGD) failed
//! on one call where two choices differed.
//!
//! With it on, the first (blocking) window of each GEMM signature ([`super::gemms`]) times, on
//! our stream right after the waiter (the operands are written), `cublasGemmEx`'s default and up
//! to [`CANDIDATES`] cuBLASLt algorithms — one warm-up and [`REPS`] timed runs each, CUDA events
//! — and keeps the fastest for every later GEMM of that signature; `cublasGemmEx` stays unless a
//! candidate is at least [`MARGIN`] faster. Runs that would change their output's input
//! (`β ≠ 0`, or scalars read on the device) write a scratch buffer of the product's size instead,
//! freed before the window ends; a fresh product (`β = 0`) is written in place (the last run
//! writes it). Costs once per signature: a few ms, and for an accumulating GEMM a transient
//! buffer of its output's size outside burn's pools. cuBLASLt's workspace, [`WORKSPACE_BYTES`] a
//! device, is allocated at the first tuning and kept (outside burn's pools, like cuBLAS's own).
//! [`report`] lists what each signature measured and chose (`ember-bench step` prints it).

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::cublaslt::{result as lt, sys as lsys};

use super::{bsys, check, drv, dsys, run_gemm, Gemm, Plan, Scalars, Signature};

/// cuBLASLt heuristic candidates timed a signature.
pub const CANDIDATES: usize = 8;
/// Timed runs of each candidate (after one warm-up).
pub const REPS: usize = 5;
/// A candidate replaces `cublasGemmEx`'s default where it takes at most `1 − MARGIN` of its time.
pub const MARGIN: f64 = 0.03;
/// cuBLASLt's workspace (split-K partial sums), one a device.
pub const WORKSPACE_BYTES: usize = 32 << 20;

/// Whether the timing runs (`EMBER_CUBLASLT=tune`; otherwise `cublasGemmEx`'s default).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("EMBER_CUBLASLT").as_deref() == Ok("tune"))
}

/// A cuBLASLt algorithm chosen for a signature, with its descriptors (kept for the process).
pub(super) struct Tuned {
    handle: lsys::cublasLtHandle_t,
    desc: lsys::cublasLtMatmulDesc_t,
    /// cuBLASLt's `A`, `B` (our `B`, `A`: row-major `C = A·B` is column-major `Cᵀ = Bᵀ·Aᵀ`)
    /// and `C`/`D` layouts.
    layouts: [lsys::cublasLtMatrixLayout_t; 3],
    algo: lsys::cublasLtMatmulAlgo_t,
    workspace: (u64, usize),
}

// raw cuBLASLt handles, used on CubeCL's device thread (one window at a time) only
unsafe impl Send for Tuned {}
unsafe impl Sync for Tuned {}

/// What runs a signature.
pub(super) enum Choice {
    /// `cublasGemmEx`, `CUBLAS_GEMM_DEFAULT`.
    Default,
    /// A cuBLASLt algorithm that measured faster.
    Lt(Tuned),
}

/// What one signature's timing measured.
#[derive(Debug, Clone)]
pub struct Record {
    /// `[m, k, n]` of the row-major product `[m,k]·[k,n]`.
    pub mkn: [usize; 3],
    /// The operands' type (`"f32"` runs TF32 tensor cores, `"bf16"`, `"f16"`).
    pub dtype: &'static str,
    /// Whether the GEMM adds into its output or reads its scalars on the device (timed on a
    /// scratch output).
    pub scratch: bool,
    /// `cublasGemmEx`'s default, ms a GEMM.
    pub default_ms: f64,
    /// The candidates' times, ms a GEMM, in cuBLASLt's order (`None`: it failed to run).
    pub candidates_ms: Vec<Option<f64>>,
    /// The index of the chosen candidate, `None` for `cublasGemmEx`'s default.
    pub chosen: Option<usize>,
    /// Each candidate's configuration as cuBLASLt reports it (algorithm id, tile, split-K,
    /// reduction, swizzle, custom option, stages, inner shape, cluster shape, workspace, waves):
    /// which property makes a candidate fast.
    pub candidates_config: Vec<String>,
}

static CHOICES: Mutex<Option<HashMap<Signature, Arc<Choice>>>> = Mutex::new(None);
static RECORDS: Mutex<Vec<Record>> = Mutex::new(Vec::new());

/// cuBLASLt's handle and workspace of a device (created at its first timing, kept).
struct Lt {
    device: usize,
    handle: lsys::cublasLtHandle_t,
    workspace: u64,
}
unsafe impl Send for Lt {}
static LT: Mutex<Vec<Lt>> = Mutex::new(Vec::new());

/// What was chosen for `sig`, if it was timed.
pub(super) fn choice(sig: &Signature) -> Option<Arc<Choice>> {
    CHOICES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .and_then(|c| c.get(sig).cloned())
}

/// Every timing so far, in order.
pub fn report() -> Vec<Record> {
    RECORDS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

pub(super) fn lt_type(t: bsys::cudaDataType) -> Option<(lsys::cudaDataType, usize, &'static str)> {
    use bsys::cudaDataType as B;
    use lsys::cudaDataType as L;
    Some(match t {
        B::CUDA_R_32F => (L::CUDA_R_32F, 4, "f32"),
        B::CUDA_R_16BF => (L::CUDA_R_16BF, 2, "bf16"),
        B::CUDA_R_16F => (L::CUDA_R_16F, 2, "f16"),
        _ => return None,
    })
}

fn lt_compute(c: bsys::cublasComputeType_t) -> Option<lsys::cublasComputeType_t> {
    use bsys::cublasComputeType_t as B;
    use lsys::cublasComputeType_t as L;
    Some(match c {
        B::CUBLAS_COMPUTE_32F_FAST_TF32 => L::CUBLAS_COMPUTE_32F_FAST_TF32,
        B::CUBLAS_COMPUTE_32F => L::CUBLAS_COMPUTE_32F,
        _ => return None,
    })
}

fn lt_err(what: &str) -> impl Fn(lt::CublasError) -> String + '_ {
    move |e| format!("{what}: {e:?}")
}

/// The device's cuBLASLt handle and workspace (the context current).
fn lt_state(device: usize) -> Result<(lsys::cublasLtHandle_t, u64), String> {
    let mut all = LT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = all.iter().find(|s| s.device == device) {
        return Ok((s.handle, s.workspace));
    }
    let handle = lt::create_handle().map_err(lt_err("cublasLtCreate"))?;
    // SAFETY: an allocation of the current context, kept for the process
    let workspace = unsafe { drv::malloc_sync(WORKSPACE_BYTES) }
        .map_err(|e| format!("cuMemAlloc (cuBLASLt workspace): {e:?}"))?;
    all.push(Lt {
        device,
        handle,
        workspace,
    });
    Ok((handle, workspace))
}

/// cuBLASLt's descriptors of `plan` (scalars on the device where `device_scalars`).
unsafe fn describe(
    plan: &Plan,
    device_scalars: bool,
) -> Result<
    (
        lsys::cublasLtMatmulDesc_t,
        [lsys::cublasLtMatrixLayout_t; 3],
    ),
    String,
> {
    let (ab, _, _) = lt_type(plan.dtype).ok_or("operand type")?;
    let (c, _, _) = lt_type(plan.c_dtype).ok_or("output type")?;
    let compute = lt_compute(plan.compute).ok_or("compute type")?;
    let desc = lt::create_matmul_desc(compute, lsys::cudaDataType::CUDA_R_32F)
        .map_err(lt_err("cublasLtMatmulDescCreate"))?;
    let set = |attr, value: i32| unsafe {
        lt::set_matmul_desc_attribute(
            desc,
            attr,
            &value as *const i32 as *const c_void,
            std::mem::size_of::<i32>(),
        )
        .map_err(lt_err("cublasLtMatmulDescSetAttribute"))
    };
    use lsys::cublasLtMatmulDescAttributes_t as D;
    // cuBLASLt's A is our B, its B our A
    let (b_t, ldb) = plan.b;
    let (a_t, lda) = plan.a;
    set(D::CUBLASLT_MATMUL_DESC_TRANSA, b_t as i32)?;
    set(D::CUBLASLT_MATMUL_DESC_TRANSB, a_t as i32)?;
    if device_scalars {
        set(
            D::CUBLASLT_MATMUL_DESC_POINTER_MODE,
            lsys::cublasLtPointerMode_t::CUBLASLT_POINTER_MODE_DEVICE as i32,
        )?;
    }
    let (m, k, n) = (plan.m as u64, plan.k as u64, plan.n as u64);
    // column-major: op(A') is n × k, op(B') is k × m, C' is n × m
    let a_rc = if b_t { (k, n) } else { (n, k) };
    let b_rc = if a_t { (m, k) } else { (k, m) };
    let layout = |t, (r, c), ld: usize| {
        lt::create_matrix_layout(t, r, c, ld as i64).map_err(lt_err("cublasLtMatrixLayoutCreate"))
    };
    let layouts = [
        layout(ab, a_rc, ldb)?,
        layout(ab, b_rc, lda)?,
        layout(c, (n, m), plan.ldc)?,
    ];
    Ok((desc, layouts))
}

/// A device buffer freed when dropped (the context current).
struct Scratch(u64);
impl Drop for Scratch {
    fn drop(&mut self) {
        // SAFETY: allocated by `malloc_sync` below; every use synchronized before the drop
        unsafe {
            let _ = drv::free_sync(self.0);
        }
    }
}

/// Times `cublasGemmEx`'s default and cuBLASLt's candidates for `j` on `stream` (queued after
/// the waiter and the guard, the context current, on CubeCL's device thread in a blocking
/// window), records the choice for its signature and returns it. Any failure of cuBLASLt keeps
/// the default (logged); the GEMM itself is run by the caller.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn tune(
    device: usize,
    cublas: bsys::cublasHandle_t,
    stream: dsys::CUstream,
    sig: Signature,
    j: &Gemm,
    (pa, pb, pc): (u64, u64, u64),
    ps: Option<u64>,
) -> Arc<Choice> {
    let chosen = if enabled() {
        match unsafe { measure(device, cublas, stream, j, (pa, pb, pc), ps) } {
            Ok(c) => c,
            Err(e) => {
                log::warn!("ember-kernels: cuBLASLt timing failed ({e}); cublasGemmEx's default");
                Choice::Default
            }
        }
    } else {
        Choice::Default
    };
    remember(sig, chosen)
}

/// Records `chosen` for every later GEMM of signature `sig`.
fn remember(sig: Signature, chosen: Choice) -> Arc<Choice> {
    let chosen = Arc::new(chosen);
    CHOICES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(Default::default)
        .insert(sig, chosen.clone());
    chosen
}

/// Frees cuBLASLt descriptors that no choice keeps.
unsafe fn destroy(desc: lsys::cublasLtMatmulDesc_t, layouts: [lsys::cublasLtMatrixLayout_t; 3]) {
    unsafe {
        let _ = lt::destroy_matmul_desc(desc);
        for l in layouts {
            let _ = lt::destroy_matrix_layout(l);
        }
    }
}

/// An event pair's elapsed time, ms (synchronizes the end event).
unsafe fn elapsed(start: dsys::CUevent, end: dsys::CUevent) -> Result<f64, String> {
    unsafe {
        drv::event::synchronize(end).map_err(|e| format!("event sync: {e:?}"))?;
        drv::event::elapsed(start, end)
            .map(|ms| ms as f64)
            .map_err(|e| format!("elapsed: {e:?}"))
    }
}

unsafe fn measure(
    device: usize,
    cublas: bsys::cublasHandle_t,
    stream: dsys::CUstream,
    j: &Gemm,
    (pa, pb, pc): (u64, u64, u64),
    ps: Option<u64>,
) -> Result<Choice, String> {
    let plan = j.plan;
    let (_, c_size, dtype) = lt_type(plan.c_dtype).ok_or("output type")?;
    let (handle, workspace) = lt_state(device)?;
    let (desc, layouts) = unsafe { describe(plan, ps.is_some())? };
    let tuned = |algo| Tuned {
        handle,
        desc,
        layouts,
        algo,
        workspace: (workspace, WORKSPACE_BYTES),
    };
    // the candidates
    let results = unsafe { heuristics(handle, desc, &layouts)? };
    let usable: Vec<&lsys::cublasLtMatmulHeuristicResult_t> = results.iter().collect();
    let candidates: Vec<lsys::cublasLtMatmulAlgo_t> = usable.iter().map(|r| r.algo).collect();
    let configs: Vec<String> = usable.iter().map(|r| config_of(r)).collect();
    // the output the timing runs write: in place for a fresh product with host scalars
    let fresh = matches!(*j.scalars, Scalars::Host(_, beta) if beta == 0.0) && ps.is_none();
    let scratch = if fresh {
        None
    } else {
        let bytes = plan.ldc * plan.m * c_size;
        let p = unsafe { drv::malloc_sync(bytes) }
            .map_err(|e| format!("cuMemAlloc (timing scratch, {bytes} B): {e:?}"))?;
        let s = Scratch(p);
        check(
            unsafe { dsys::cuMemsetD8Async(p, 0, bytes, stream) },
            "cuMemsetD8Async",
        )?;
        Some(s)
    };
    let out = scratch.as_ref().map_or(pc, |s| s.0);
    let flags = dsys::CUevent_flags::CU_EVENT_DEFAULT;
    let (start, end) = (
        drv::event::create(flags).map_err(|e| format!("event: {e:?}"))?,
        drv::event::create(flags).map_err(|e| format!("event: {e:?}"))?,
    );
    let time = |run: &dyn Fn() -> Result<(), String>| -> Result<f64, String> {
        run()?;
        unsafe {
            drv::event::record(start, stream).map_err(|e| format!("record: {e:?}"))?;
            for _ in 0..REPS {
                run()?;
            }
            drv::event::record(end, stream).map_err(|e| format!("record: {e:?}"))?;
            Ok(elapsed(start, end)? / REPS as f64)
        }
    };
    let default = time(&|| unsafe { run_gemm(cublas, j, pa, pb, out, ps) });
    let timed: Vec<Option<f64>> = candidates
        .iter()
        .map(|&algo| {
            let t = tuned(algo);
            time(&|| unsafe { run(&t, stream, j, (pa, pb, out), ps, out) }).ok()
        })
        .collect();
    // whatever failed above, our stream is idle before the scratch and the events go
    let idle = unsafe { drv::stream::synchronize(stream) }.map_err(|e| format!("sync: {e:?}"));
    unsafe {
        let _ = drv::event::destroy(start);
        let _ = drv::event::destroy(end);
    }
    drop(scratch);
    idle?;
    let default = default?;
    let best = timed
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.map(|t| (i, t)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .filter(|&(_, t)| t <= default * (1.0 - MARGIN));
    RECORDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Record {
            mkn: [plan.m, plan.k, plan.n],
            dtype,
            scratch: !fresh,
            default_ms: default,
            candidates_ms: timed,
            chosen: best.map(|(i, _)| i),
            candidates_config: configs,
        });
    match best {
        Some((i, _)) => Ok(Choice::Lt(tuned(candidates[i]))),
        None => {
            unsafe { destroy(desc, layouts) };
            Ok(Choice::Default)
        }
    }
}

/// cuBLASLt's heuristic candidates for `desc` (up to [`CANDIDATES`], in its order), those it says
/// can run.
unsafe fn heuristics(
    handle: lsys::cublasLtHandle_t,
    desc: lsys::cublasLtMatmulDesc_t,
    layouts: &[lsys::cublasLtMatrixLayout_t; 3],
) -> Result<Vec<lsys::cublasLtMatmulHeuristicResult_t>, String> {
    let pref = lt::create_matmul_pref().map_err(lt_err("cublasLtMatmulPreferenceCreate"))?;
    let bytes = WORKSPACE_BYTES as u64;
    let mut found = 0i32;
    let mut results: Vec<lsys::cublasLtMatmulHeuristicResult_t> =
        vec![unsafe { std::mem::zeroed() }; CANDIDATES];
    let queried = unsafe {
        lt::set_matmul_pref_attribute(
            pref,
            lsys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
            &bytes as *const u64 as *const c_void,
            std::mem::size_of::<u64>(),
        )
        .map_err(lt_err("cublasLtMatmulPreferenceSetAttribute"))
        .and_then(|()| {
            lsys::cublasLtMatmulAlgoGetHeuristic(
                handle,
                desc,
                layouts[0],
                layouts[1],
                layouts[2],
                layouts[2],
                pref,
                CANDIDATES as i32,
                results.as_mut_ptr(),
                &mut found,
            )
            .result()
            .map_err(lt_err("cublasLtMatmulAlgoGetHeuristic"))
        })
    };
    unsafe {
        let _ = lt::destroy_matmul_pref(pref);
    }
    queried?;
    results.truncate(found.max(0) as usize);
    results.retain(|r| r.state == lsys::cublasStatus_t::CUBLAS_STATUS_SUCCESS);
    Ok(results)
}

/// One attribute of a candidate's configuration (`None` where cuBLASLt does not report it).
fn config_attribute(
    r: &lsys::cublasLtMatmulHeuristicResult_t,
    attr: lsys::cublasLtMatmulAlgoConfigAttributes_t,
) -> Option<u64> {
    let mut size = 0usize;
    let mut buf = [0u8; 8];
    unsafe {
        // the attribute's size first (the call checks it exactly), then its value
        let _ = lsys::cublasLtMatmulAlgoConfigGetAttribute(
            &r.algo,
            attr,
            std::ptr::null_mut(),
            0,
            &mut size,
        );
        if size == 0 || size > buf.len() {
            return None;
        }
        let mut written = 0usize;
        let ok = lsys::cublasLtMatmulAlgoConfigGetAttribute(
            &r.algo,
            attr,
            buf.as_mut_ptr() as *mut c_void,
            size,
            &mut written,
        );
        (ok == lsys::cublasStatus_t::CUBLAS_STATUS_SUCCESS).then(|| u64::from_le_bytes(buf))
    }
}

/// Whether the pinned algorithm of an f32 weight's update GEMM is on (`EMBER_UPDATE_GEMM`:
/// `pinned`, the default, or `default` for `cublasGemmEx`'s own choice with host scalars).
///
/// The update GEMM of an f32 weight on f16 tensor cores (f16 `P` and `N` summed into the f32
/// `W`, `W ← β·W + α·P·N`) is memory-bound: `K` is the rank, so `W`'s read and write outweigh
/// the products. Measured on the H100 at 4096×11008 (2026-11-25, `docs/perf-notes.md`, "What is
/// left at 4096×11008 r512"): `cublasGemmEx`'s default takes 256×128 tiles and ran 0.20 ms with
/// host scalars, 0.24–0.26 ms with scalars on the device (the checked policies); cuBLASLt's
/// candidate with 128×128 tiles ran 0.155–0.162 ms with device scalars (r128 0.137 against
/// 0.213, r1024 0.194 against 0.297) and 0.19 with host scalars. So the update reads its scalars
/// on the device always and runs cuBLASLt's first heuristic candidate with 128×128 tiles: a rule,
/// not a timing — every process on one GPU and cuBLAS version makes the same choice (the
/// heuristics are deterministic), so runs repeat bit for bit.
pub fn pinned_update() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("EMBER_UPDATE_GEMM").as_deref() != Ok("default"))
}

/// What runs an f32 weight's update GEMM in this process (for reports): the pinned cuBLASLt
/// algorithm, or `cublasGemmEx`'s default where the rule is off or found no 128×128 candidate.
pub fn update_gemm() -> &'static str {
    match (pinned_update(), PINNED.load(Ordering::Relaxed)) {
        (true, true) => "cublaslt-128x128-device-scalars",
        (true, false) => "cublasgemmex-default-device-scalars",
        (false, _) => "cublasgemmex-default",
    }
}

/// Whether a pinned choice was made (for [`update_gemm`]).
static PINNED: AtomicBool = AtomicBool::new(false);

/// Whether job `j` is an f32 weight's update GEMM under the pinned rule: f16 operands into an
/// f32 `C`, scalars on the device (`ps`).
pub(super) fn pins(j: &Gemm, ps: Option<u64>) -> bool {
    pinned_update()
        && ps.is_some()
        && j.plan.dtype == bsys::cudaDataType::CUDA_R_16F
        && j.plan.c_dtype == bsys::cudaDataType::CUDA_R_32F
}

/// The pinned choice for `sig` ([`pinned_update`]): cuBLASLt's first heuristic candidate with
/// 128×128 tiles, else `cublasGemmEx`'s default (logged); recorded for the signature.
pub(super) unsafe fn pin(device: usize, sig: Signature, j: &Gemm) -> Arc<Choice> {
    let chosen = match unsafe { tile_rule(device, j.plan) } {
        Ok(Some(t)) => {
            PINNED.store(true, Ordering::Relaxed);
            Choice::Lt(t)
        }
        Ok(None) => {
            log::warn!(
                "ember-kernels: no 128x128 cuBLASLt candidate for the update GEMM {:?}; \
                 cublasGemmEx's default",
                [j.plan.m, j.plan.k, j.plan.n]
            );
            Choice::Default
        }
        Err(e) => {
            log::warn!("ember-kernels: cuBLASLt for the update GEMM failed ({e}); cublasGemmEx");
            Choice::Default
        }
    };
    remember(sig, chosen)
}

/// The choice for an out-of-place GEMM (`D = α·A·B + β·C`, [`super::accumulate`] on a weight
/// held elsewhere), which `cublasGemmEx` cannot run: the pinned rule's 128×128 candidate where
/// [`pins`] says so, else cuBLASLt's first heuristic candidate — a rule, not a timing, so runs
/// repeat bit for bit; `Default` (logged) where cuBLASLt has none, and the caller then copies `C`
/// into `D` and runs `D` in place. Recorded for the signature.
pub(super) unsafe fn out_of_place(
    device: usize,
    sig: Signature,
    j: &Gemm,
    device_scalars: bool,
) -> Arc<Choice> {
    let pinned = pinned_update()
        && device_scalars
        && j.plan.dtype == bsys::cudaDataType::CUDA_R_16F
        && j.plan.c_dtype == bsys::cudaDataType::CUDA_R_32F;
    let found = if pinned {
        unsafe { tile_rule(device, j.plan) }
    } else {
        unsafe { first_candidate(device, j.plan, device_scalars) }
    };
    let chosen = match found {
        Ok(Some(t)) => Choice::Lt(t),
        Ok(None) => {
            log::warn!(
                "ember-kernels: no cuBLASLt candidate for the out-of-place GEMM {:?}; a copy and \
                 cublasGemmEx",
                [j.plan.m, j.plan.k, j.plan.n]
            );
            Choice::Default
        }
        Err(e) => {
            log::warn!(
                "ember-kernels: cuBLASLt for the out-of-place GEMM failed ({e}); a copy and \
                 cublasGemmEx"
            );
            Choice::Default
        }
    };
    remember(sig, chosen)
}

/// cuBLASLt's first heuristic candidate for `plan` that `pick` takes, as a [`Tuned`] (its
/// descriptors freed where there is none).
unsafe fn candidate(
    device: usize,
    plan: &Plan,
    device_scalars: bool,
    pick: impl Fn(&lsys::cublasLtMatmulHeuristicResult_t) -> bool,
) -> Result<Option<Tuned>, String> {
    let (handle, workspace) = lt_state(device)?;
    let (desc, layouts) = unsafe { describe(plan, device_scalars)? };
    match unsafe { heuristics(handle, desc, &layouts) }.map(|r| r.into_iter().find(|r| pick(r))) {
        Ok(Some(r)) => Ok(Some(Tuned {
            handle,
            desc,
            layouts,
            algo: r.algo,
            workspace: (workspace, WORKSPACE_BYTES),
        })),
        other => {
            unsafe { destroy(desc, layouts) };
            other.map(|_| None)
        }
    }
}

unsafe fn first_candidate(
    device: usize,
    plan: &Plan,
    device_scalars: bool,
) -> Result<Option<Tuned>, String> {
    unsafe { candidate(device, plan, device_scalars, |_| true) }
}

/// cuBLAS's tile enumeration: 128×128 (`CUBLASLT_MATMUL_TILE_128x128`).
const TILE_128X128: u64 = 20;

unsafe fn tile_rule(device: usize, plan: &Plan) -> Result<Option<Tuned>, String> {
    unsafe {
        candidate(device, plan, true, |r| {
            config_attribute(
                r,
                lsys::cublasLtMatmulAlgoConfigAttributes_t::CUBLASLT_ALGO_CONFIG_TILE_ID,
            ) == Some(TILE_128X128)
        })
    }
}

/// A heuristic candidate's configuration, as `cublasLtMatmulAlgoConfigGetAttribute` reports it.
fn config_of(r: &lsys::cublasLtMatmulHeuristicResult_t) -> String {
    use lsys::cublasLtMatmulAlgoConfigAttributes_t as A;
    let get = |attr: A| config_attribute(r, attr).map_or("?".into(), |v| v.to_string());
    format!(
        "id {} tile {} splitk {} reduction {} swizzle {} custom {} stages {} inner {} cluster {} \
         workspace {} waves {:.2}",
        get(A::CUBLASLT_ALGO_CONFIG_ID),
        get(A::CUBLASLT_ALGO_CONFIG_TILE_ID),
        get(A::CUBLASLT_ALGO_CONFIG_SPLITK_NUM),
        get(A::CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME),
        get(A::CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING),
        get(A::CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION),
        get(A::CUBLASLT_ALGO_CONFIG_STAGES_ID),
        get(A::CUBLASLT_ALGO_CONFIG_INNER_SHAPE_ID),
        get(A::CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID),
        r.workspaceSize,
        r.wavesCount,
    )
}

/// `D ← α·A·B + β·C` with a chosen cuBLASLt algorithm on `stream` (scalars as [`run_gemm`]
/// takes them: the job's host values, or the device pointer `ps`); `pd` is `pc` in place, else a
/// separate output of `C`'s layout.
pub(super) unsafe fn run(
    t: &Tuned,
    stream: dsys::CUstream,
    j: &Gemm,
    (pa, pb, pc): (u64, u64, u64),
    ps: Option<u64>,
    pd: u64,
) -> Result<(), String> {
    let (host_alpha, host_beta) = match *j.scalars {
        Scalars::Host(alpha, beta) => (alpha, beta),
        Scalars::Device(_) | Scalars::Guarded(_) => (0.0, 0.0),
    };
    let (p_alpha, p_beta) = match ps {
        None => (
            &host_alpha as *const f32 as *const c_void,
            &host_beta as *const f32 as *const c_void,
        ),
        Some(p) => (p as *const c_void, (p + 4) as *const c_void),
    };
    unsafe {
        lt::matmul(
            t.handle,
            t.desc,
            p_alpha,
            p_beta,
            pb as *const c_void,
            t.layouts[0],
            pa as *const c_void,
            t.layouts[1],
            pc as *const c_void,
            t.layouts[2],
            pd as *mut c_void,
            t.layouts[2],
            &t.algo,
            t.workspace.0 as *mut c_void,
            t.workspace.1,
            stream as lsys::cudaStream_t,
        )
        .map_err(lt_err("cublasLtMatmul"))
    }
}
