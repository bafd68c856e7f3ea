# Head-node ingest (store.database_mode: head): cluster jobs write only sentinels and step
# logs; this local job loads every sentinel into the database on the submit host, with the
# same _checkpoints row a job would have written. Tables already loaded with the same content
# are skipped, so it costs little when only a few jobs reran.


rule ingest:
    input:
        unpack(usher_ingest_inputs),
    output:
        record=USHER.ingest_record,
    log:
        USHER.log("ingest", "ingest"),
    localrule: True
    conda:
        "../envs/usher_pipeline.yaml"
    script:
        "../scripts/ingest.py"
