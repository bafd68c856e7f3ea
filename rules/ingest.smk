# Head-node ingest (store.database_mode: head): cluster jobs write only sentinels and step
# logs; this local rule loads each sentinel into the database on the submit host, with the
# same _checkpoints row the job would have written. It runs inside the Snakemake process
# (`run:`): no Python start-up and no DuckDB import per table.


rule ingest:
    input:
        unpack(usher_ingest_inputs),
    output:
        marker=USHER.ingested("{table}"),
    log:
        USHER.log("ingest", "{table}"),
    localrule: True
    run:
        usher_ingest(input, output, log, wildcards)
