//! Minting JIT configs for a burst of runners: this client's concurrent calls against the same
//! client used one call at a time, which is how the reference client behaves (its global mutex
//! serialises every call, PROTOCOL.md section 10.1).
//!
//! Both run in the same process against the in-process simulator with 20 ms of injected
//! latency on JIT calls, standing in for the round trip to GitHub. The figure to read is the
//! ratio of the two, not the absolute times.

use std::sync::atomic::{AtomicU64, Ordering};

use actions_scaleset::{Client, Credentials, JitRunnerSetting, RunnerGroupId, RunnerScaleSet};
use criterion::{Criterion, criterion_group, criterion_main};
use scaleset_sim::{EndpointClass, Fault, SimConfig, Simulator};

const BURST: usize = 32;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime builds on this machine");
    let (sim, client, scale_set_id) = rt.block_on(async {
        let sim = Simulator::start(SimConfig::default())
            .await
            .expect("simulator starts");
        let client = Client::builder(
            sim.config_url(),
            Credentials::token(sim.token()).expect("sim token is valid"),
        )
        .build()
        .expect("client builds");
        let set = client
            .create_runner_scale_set(&RunnerScaleSet {
                name: "bench".into(),
                runner_group_id: RunnerGroupId::new(1),
                ..Default::default()
            })
            .await
            .expect("scale set created");
        sim.faults()
            .inject(Fault::Latency {
                class: EndpointClass::Jit,
                method: None,
                delay_ms: 20,
                count: None,
                after: false,
            })
            .expect("latency fault accepted");
        (sim, client, set.id)
    });
    let counter = AtomicU64::new(0);
    let next_name = || format!("bench-{}", counter.fetch_add(1, Ordering::Relaxed));

    let mut group = c.benchmark_group(format!("mint {BURST} JIT configs, 20 ms latency"));
    group.sample_size(10);
    group.bench_function("one at a time (reference: global lock)", |b| {
        b.to_async(&rt).iter(|| async {
            for _ in 0..BURST {
                let setting = JitRunnerSetting {
                    name: next_name(),
                    work_folder: String::new(),
                };
                client
                    .generate_jit_runner_config(scale_set_id, &setting)
                    .await
                    .expect("JIT config minted");
            }
        })
    });
    group.bench_function("concurrent (this client)", |b| {
        b.to_async(&rt).iter(|| async {
            let calls = (0..BURST).map(|_| {
                let setting = JitRunnerSetting {
                    name: next_name(),
                    work_folder: String::new(),
                };
                let client = client.clone();
                async move {
                    client
                        .generate_jit_runner_config(scale_set_id, &setting)
                        .await
                }
            });
            for result in futures::future::join_all(calls).await {
                result.expect("JIT config minted");
            }
        })
    });
    group.finish();
    rt.block_on(sim.shutdown());
}

criterion_group!(benches, bench);
criterion_main!(benches);
