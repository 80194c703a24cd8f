"""``missu-keras publish RUN --preset NAME --registry FILE``: make a trained model what
``load_pretrained(NAME)`` returns for everyone whose ``MISSU_KERAS_REGISTRY`` points at
FILE (`missu_keras.weights.publishing.publish`)."""

from __future__ import annotations


def register(subparsers):
    p = subparsers.add_parser(
        "publish", help="publish a trained model in a weights registry (for load_pretrained)",
        description="Writes RUN's model as one .keras file, its sha256 and the registry entry, so "
                    "load_pretrained(NAME) resolves it for users whose MISSU_KERAS_REGISTRY "
                    "(or registry=) names the registry file.")
    p.add_argument("run", help="a train output folder (its best checkpoint, else the last), a saved "
                               "preset folder or a .keras file")
    p.add_argument("--preset", required=True, help="the name load_pretrained will resolve (e.g. brats)")
    p.add_argument("--registry", required=True, help="the registry file to create or update (.json, .yaml)")
    p.add_argument("--weights-file", default=None,
                   help="where to write the .keras file (default: beside the registry)")
    p.add_argument("--url", default=None,
                   help="where the file will be served from; the entry then holds this URL")
    p.add_argument("--description", default=None, help="a line for the entry")
    p.add_argument("--overwrite", action="store_true", help="replace an existing entry and file")
    p.set_defaults(func=run)


def run(args) -> int:
    from missu_keras.weights.publishing import publish  # loads TensorFlow: at run time

    published = publish(args.run, args.preset, args.registry, weights_file=args.weights_file,
                        url=args.url, description=args.description, overwrite=args.overwrite)
    print(f"published {published.name!r}: {published.weights_file} (sha256 {published.sha256}) "
          f"in {published.registry_file}")
    print(f"users load it with MISSU_KERAS_REGISTRY={published.registry_file} and "
          f"missu_keras.load_pretrained({published.name!r})")
    return 0
