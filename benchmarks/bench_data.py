"""Input-pipeline throughput (crops/s at 128^3 x 4 with the BraTS augmentations)."""
from missu_keras.data.benchmark import main

raise SystemExit(main())
