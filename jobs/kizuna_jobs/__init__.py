"""Ray Train entrypoints (retrain, distill, quantize, evaluate), run locally or as RayJobs."""
