# Head-node ingest (store.database_mode: head): cluster jobs write only sentinels and step
# logs; this local rule loads each sentinel into the database on the submit host, with the
# same _checkpoints row the job would have written.


rule ingest:
    input:
        unpack(usher_ingest_inputs),
    output:
        marker=USHER.ingested("{table}"),
    log:
        USHER.log("ingest", "{table}"),
    localrule: True
    conda:
        "../envs/usher_pipeline.yaml"
    script:
        "../scripts/ingest.py"
