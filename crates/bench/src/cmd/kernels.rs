//! `kernels`: every fused kernel against the portable path on a device.

use crate::Device;

pub fn run(device: Device, seed: u64) -> Result<(), String> {
    use burn::tensor::backend::{AutodiffBackend, Backend};
    use ember_kernels::{selfcheck, EmberBackend};
    let failed = on_device!(device, B => {
        type I = <B as AutodiffBackend>::InnerBackend;
        let dev = Default::default();
        println!(
            "backend {} — fused kernels: {}",
            <I as Backend>::name(&dev),
            <I as EmberBackend>::fused_kernels()
        );
        selfcheck::report(&selfcheck::run_all::<I>(&dev, seed))
    });
    if failed > 0 {
        return Err(format!("{failed} kernel checks failed"));
    }
    Ok(())
}
