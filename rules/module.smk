# Entry point for loading the library's rules with Snakemake's `module` directive. The
# including workflow first includes library.smk (for USHER and the helpers its own rules
# use) and registers its tables; the module shares its config, and so its registry:
#
#   include: "<path to usher_pipeline>/rules/library.smk"
#   USHER.register("my_table")
#
#   module usher:
#       snakefile: "<path to usher_pipeline>/rules/module.smk"
#       config: config
#
#   use rule * from usher as usher_*


include: "library.smk"
include: "provenance.smk"
