-- Inputs uploaded through the coordinator (your own TorchScript models and datasets), addressed
-- by the sha256 of their bytes. Sweeps name them by digest (model.uploaded, dataset.upload);
-- workers fetch them with DownloadInput. One row per distinct content: re-uploads add nothing.
CREATE TABLE inputs (
    sha256      TEXT PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('torchscript', 'image_folder', 'safetensors')),
    name        TEXT NOT NULL,
    bytes       BIGINT NOT NULL,
    uri         TEXT NOT NULL,
    owner       TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
