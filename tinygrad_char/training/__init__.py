"""Running a training job: configuration, data and tokenizer, checkpoints, the training
loop, mixed precision, and data parallelism over MPI with its rank watcher."""
