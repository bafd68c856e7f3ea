# Bulk downloads (gnomAD constraint TSV, HPA and GTEx tables, MGI and ZFIN reports): one job
# per file, streamed to <file>.part beside it, resumed with HTTP Range after a kill or a cut
# connection, checked against an expected SHA-256 when given, renamed into place whole. Its
# step log records the URL (secrets redacted), size, SHA-256, ETag and Last-Modified; the
# provenance rule writes a sidecar beside the file. Include after library.smk, declare each
# file with usher_download(...) before provenance.smk, and use the path it returns:
#
#   include: library_path("download.smk")
#   CONSTRAINT = usher_download(
#       "gnomad.v4.1.constraint_metrics.tsv",
#       url="https://storage.googleapis.com/.../gnomad.v4.1.constraint_metrics.tsv",
#       sha256="...",            # optional: a mismatch fails the job and removes the part
#       source="gnomad",         # optional: api.sources.gnomad settings and secrets apply
#       version="v4.1",          # optional: the release, recorded as the source's version
#   )
#
# The files go to <data_dir>/downloads/ (usher_pipeline.sources.download.Downloads).


from usher_pipeline.sources.download import FILE_NAME, Downloads

# The declared files live in the config, which a module given `config: config` shares.
USHER_DOWNLOADS = Downloads(
    config.setdefault("_usher_downloads", {}),
    USHER,
    f"{config.get('data_dir', 'data')}/downloads",
    exit_on_error=True,
)
usher_download = USHER_DOWNLOADS.declare


rule usher_download:
    output:
        file=USHER_DOWNLOADS.path("{download}"),
        steplog=USHER.steplog("download_{download}"),
    log:
        USHER.log("usher_download", "{download}"),
    wildcard_constraints:
        download=FILE_NAME,  # not a sidecar, which the provenance rule writes beside it
    conda:
        "../envs/usher_pipeline.yaml"
    params:
        url=USHER_DOWNLOADS.param("url"),
        sha256=USHER_DOWNLOADS.param("sha256"),
        source=USHER_DOWNLOADS.param("source"),
        version=USHER_DOWNLOADS.param("version"),
    script:
        "../scripts/download.py"
