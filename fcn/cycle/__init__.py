"""The cycle job: labeled exports -> ingest -> fine-tune from the champion -> evaluate -> the
registry's champion rule (fcn.cycle.job). It composes the jobs below it, each by its library
call: fcn.data.ingest, fcn.training.driver, fcn.evaluation.job, fcn.tracking.registry."""
