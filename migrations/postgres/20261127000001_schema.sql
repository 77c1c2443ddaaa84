-- lth control-plane schema (Postgres). States are short lowercase words, checked here so that a bug
-- in any coordinator cannot write a state the others do not understand.

CREATE TABLE sweeps (
    id            BIGSERIAL PRIMARY KEY,
    client_token  TEXT UNIQUE,                 -- idempotent submit; NULL when the client gave none
    name          TEXT NOT NULL,
    spec          JSONB NOT NULL,              -- the validated lth_spec::SweepSpec
    state         TEXT NOT NULL CHECK (state IN ('running', 'paused', 'cancelled', 'succeeded', 'failed')),
    priority      INTEGER NOT NULL DEFAULT 0,
    max_attempts  INTEGER NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at   TIMESTAMPTZ
);

-- One (metric, rate, seed) chain of a sweep.
CREATE TABLE trials (
    id            BIGSERIAL PRIMARY KEY,
    sweep_id      BIGINT NOT NULL REFERENCES sweeps(id) ON DELETE CASCADE,
    metric        TEXT NOT NULL,
    rate          DOUBLE PRECISION NOT NULL,
    seed          BIGINT NOT NULL,
    levels        INTEGER NOT NULL,            -- pruning levels after the shared level 0
    dense_job_id  BIGINT,                      -- the seed's shared level-0 job (FK added below)
    state         TEXT NOT NULL CHECK (state IN ('running', 'succeeded', 'failed', 'cancelled')),
    UNIQUE (sweep_id, metric, rate, seed)
);

-- A job is either a seed's shared level 0 ('dense', trial_id NULL) or one level of a trial.
CREATE TABLE jobs (
    id               BIGSERIAL PRIMARY KEY,
    sweep_id         BIGINT NOT NULL REFERENCES sweeps(id) ON DELETE CASCADE,
    trial_id         BIGINT REFERENCES trials(id) ON DELETE CASCADE,
    kind             TEXT NOT NULL CHECK (kind IN ('dense', 'level')),
    seed             BIGINT NOT NULL,
    metric           TEXT,                     -- NULL for dense jobs
    rate             DOUBLE PRECISION NOT NULL DEFAULT 0,
    level            INTEGER NOT NULL,
    parent_job_id    BIGINT REFERENCES jobs(id),
    dense_job_id     BIGINT REFERENCES jobs(id),
    state            TEXT NOT NULL CHECK (state IN ('blocked', 'ready', 'running', 'succeeded', 'failed', 'cancelled')),
    paused           BOOLEAN NOT NULL DEFAULT false,   -- the sweep is paused: not claimable
    priority         INTEGER NOT NULL DEFAULT 0,
    attempt          INTEGER NOT NULL DEFAULT 0,       -- the current (or last) lease is (id, attempt)
    max_attempts     INTEGER NOT NULL,
    lease_expires_at TIMESTAMPTZ,
    worker_id        TEXT,
    error_count      INTEGER NOT NULL DEFAULT 0,       -- attempts that failed
    lost_count       INTEGER NOT NULL DEFAULT 0,       -- attempts whose worker vanished (lease expired)
    last_error       TEXT,
    content_hash     TEXT NOT NULL,
    reused_from      BIGINT REFERENCES jobs(id),       -- a succeeded job with the same hash whose results this job shares
    progress         DOUBLE PRECISION NOT NULL DEFAULT 0,
    eta_seconds      DOUBLE PRECISION,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at       TIMESTAMPTZ,
    finished_at      TIMESTAMPTZ
);
ALTER TABLE trials ADD CONSTRAINT trials_dense_job_fk FOREIGN KEY (dense_job_id) REFERENCES jobs(id);

-- The claim query walks this index in priority order and skips locked rows.
CREATE INDEX jobs_claimable ON jobs (priority DESC, id) WHERE state = 'ready' AND NOT paused;
CREATE INDEX jobs_running_lease ON jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX jobs_open_by_sweep ON jobs (sweep_id) WHERE state IN ('blocked', 'ready', 'running');
CREATE INDEX jobs_by_sweep ON jobs (sweep_id, id);
CREATE INDEX jobs_by_parent ON jobs (parent_job_id);
CREATE INDEX jobs_by_trial ON jobs (trial_id, level);
CREATE INDEX jobs_succeeded_hash ON jobs (content_hash) WHERE state = 'succeeded';

-- Every lease ever handed out, with how it ended.
CREATE TABLE job_attempts (
    job_id      BIGINT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL,
    worker_id   TEXT NOT NULL,
    started_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ,
    outcome     TEXT NOT NULL CHECK (outcome IN ('running', 'succeeded', 'failed', 'lost', 'aborted')),
    error       TEXT,
    PRIMARY KEY (job_id, attempt)
);

-- One row per succeeded (not reused) job.
CREATE TABLE level_results (
    job_id        BIGINT PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
    sparsity      DOUBLE PRECISION NOT NULL,
    test_accuracy DOUBLE PRECISION NOT NULL,
    test_loss     DOUBLE PRECISION NOT NULL,
    train_loss    DOUBLE PRECISION NOT NULL,
    epochs        DOUBLE PRECISION NOT NULL,
    wall_seconds  DOUBLE PRECISION NOT NULL,
    iterations    BIGINT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The kept-weight mask of each layer, as bits (row-major over the weight), so that SQL can count,
-- compare and intersect tickets.
CREATE TABLE masks (
    job_id      BIGINT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    layer       TEXT NOT NULL,
    ordinal     INTEGER NOT NULL,              -- the layer's position in the network
    kept        BIGINT NOT NULL,
    total       BIGINT NOT NULL,
    bits        BIT VARYING NOT NULL,
    collapsed   BOOLEAN NOT NULL,
    weight_norm DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (job_id, layer),
    CHECK (kept >= 0 AND kept <= total AND length(bits) = total)
);

CREATE TABLE events (
    id          BIGSERIAL PRIMARY KEY,
    sweep_id    BIGINT NOT NULL REFERENCES sweeps(id) ON DELETE CASCADE,
    job_id      BIGINT REFERENCES jobs(id) ON DELETE CASCADE,   -- NULL: a sweep-level event
    kind        TEXT NOT NULL,                 -- 'state', 'progress', 'sweep'
    job_state   TEXT,
    attempt     INTEGER,
    progress    DOUBLE PRECISION,
    detail      JSONB,                         -- progress numbers or an error
    at          TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX events_by_sweep ON events (sweep_id, id);

CREATE TABLE workers (
    worker_id        TEXT PRIMARY KEY,
    host             TEXT NOT NULL,
    gpus             JSONB NOT NULL DEFAULT '[]',
    cpus             INTEGER NOT NULL DEFAULT 0,
    slots            INTEGER NOT NULL DEFAULT 0,
    libtorch_version TEXT NOT NULL DEFAULT '',
    cuda_version     TEXT NOT NULL DEFAULT '',
    registered_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen        TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Files in the object store. A later attempt's upload of the same name replaces the earlier one.
CREATE TABLE artifacts (
    job_id      BIGINT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    uri         TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    bytes       BIGINT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, name)
);
