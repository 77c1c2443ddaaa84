//! Small sweeps on the bundled digits (LeNet-300-100, CPU, seconds per job), as TOML text (what a
//! user submits with lthctl) or as a [`SweepSpec`] (what the gRPC tests send).

use lth_sweep::SweepSpec;

/// A digits sweep. The defaults are the daemon tests': one metric, rate 0.2, one seed, one level,
/// two epochs, checkpoints every 10 iterations (so a job stopped mid-way has one to resume from).
#[derive(Clone, Debug)]
pub struct DigitsSweep {
    pub name: String,
    pub model: String,
    pub metrics: Vec<String>,
    /// TOML values: `0.2`, or `[0.5, 0.3]` for a per-level schedule.
    pub rates: Vec<String>,
    pub seeds: Vec<u64>,
    pub levels: u32,
    pub max_attempts: Option<u32>,
    pub length: String,
    pub batch_size: Option<u32>,
    pub lr: f64,
    pub momentum: Option<f64>,
    pub rewind: Option<String>,
    pub checkpoint_every: Option<String>,
    /// Top-level TOML lines added as they are (`controls = [...]`).
    pub extra: Vec<String>,
}

impl DigitsSweep {
    pub fn new(name: &str) -> DigitsSweep {
        DigitsSweep {
            name: name.into(),
            model: "\"lenet300100\"".into(),
            metrics: vec!["magnitude".into()],
            rates: vec!["0.2".into()],
            seeds: vec![1],
            levels: 1,
            max_attempts: Some(3),
            length: "2ep".into(),
            batch_size: Some(64),
            lr: 0.05,
            momentum: Some(0.9),
            rewind: Some("0it".into()),
            checkpoint_every: Some("10it".into()),
            extra: Vec::new(),
        }
    }

    pub fn metrics(mut self, metrics: &[&str]) -> Self {
        self.metrics = metrics.iter().map(|m| m.to_string()).collect();
        self
    }

    pub fn rates(mut self, rates: &[f64]) -> Self {
        self.rates = rates.iter().map(|r| format!("{r:?}")).collect();
        self
    }

    pub fn seeds(mut self, seeds: &[u64]) -> Self {
        self.seeds = seeds.to_vec();
        self
    }

    pub fn levels(mut self, levels: u32) -> Self {
        self.levels = levels;
        self
    }

    pub fn length(mut self, length: &str) -> Self {
        self.length = length.into();
        self
    }

    pub fn lr(mut self, lr: f64) -> Self {
        self.lr = lr;
        self
    }

    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n);
        self
    }

    pub fn toml(&self) -> String {
        let list = |v: Vec<String>| v.join(", ");
        let mut t = format!(
            "name = {:?}\nmodel = {}\ndataset = {{ name = \"digits\" }}\nmetrics = [{}]\nrates = [{}]\nseeds = [{}]\nlevels = {}\n",
            self.name,
            self.model,
            list(self.metrics.iter().map(|m| format!("{m:?}")).collect()),
            list(self.rates.clone()),
            list(self.seeds.iter().map(|s| s.to_string()).collect()),
            self.levels,
        );
        if let Some(n) = self.max_attempts {
            t.push_str(&format!("max_attempts = {n}\n"));
        }
        for line in &self.extra {
            t.push_str(line);
            t.push('\n');
        }
        t.push_str(&format!("[recipe]\nlength = {:?}\n", self.length));
        if let Some(b) = self.batch_size {
            t.push_str(&format!("batch_size = {b}\n"));
        }
        t.push_str(&format!("lr = {:?}\n", self.lr));
        if let Some(m) = self.momentum {
            t.push_str(&format!("momentum = {m:?}\n"));
        }
        if let Some(r) = &self.rewind {
            t.push_str(&format!("rewind = {r:?}\n"));
        }
        if let Some(c) = &self.checkpoint_every {
            t.push_str(&format!("checkpoint_every = {c:?}\n"));
        }
        t
    }

    pub fn spec(&self) -> SweepSpec {
        SweepSpec::from_toml_str(&self.toml()).unwrap_or_else(|e| panic!("a test sweep that does not parse: {e}\n{}", self.toml()))
    }

    /// Jobs of the sweep: a dense job per seed and a level job per (metric, rate, seed, level).
    pub fn job_count(&self) -> usize {
        self.seeds.len() * (1 + self.metrics.len() * self.rates.len() * self.levels as usize)
    }
}
