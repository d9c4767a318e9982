"""Writes the book's notebooks (nbformat v4, no outputs) from the cells below.

Run from the repository root after editing a notebook's text here:

    python notebooks/generate.py

The notebooks stay thin: a parameters cell, a few calls into ``duel``, figures
and tables. Each has a short Overview / Prerequisites / Time to learn header, a
sentence before every code cell, and a sentence after every figure saying what
to look at. Cell ids are fixed, so regenerating an unchanged notebook gives the
same file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent

KERNEL = {
    "kernelspec": {
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
        "name": "python3",
    },
    "language_info": {"name": "python"},
}


def header(title: str, overview: str, prerequisites: list[str], time: str) -> str:
    listed = "\n".join(f"- {item}" for item in prerequisites)
    return (
        f"# {title}\n\n## Overview\n\n{overview}\n\n## Prerequisites\n\n{listed}\n\n"
        f"## Time to learn\n\n{time}"
    )


def md(text: str) -> tuple[str, str, list[str]]:
    return ("markdown", text.strip("\n"), [])


def code(text: str, *tags: str) -> tuple[str, str, list[str]]:
    return ("code", text.strip("\n"), list(tags))


def notebook(
    name: str, cells: list[tuple[str, str, list[str]]]
) -> nbformat.NotebookNode:
    document = nbformat.v4.new_notebook(metadata=KERNEL)
    for index, (kind, source, tags) in enumerate(cells):
        metadata = {"tags": tags} if tags else {}
        if kind == "markdown":
            cell = nbformat.v4.new_markdown_cell(source, metadata=metadata)
        else:
            cell = nbformat.v4.new_code_cell(source, metadata=metadata)
        cell["id"] = f"{name.split('_')[0]}-{index:02d}"
        document.cells.append(cell)
    nbformat.validate(document)
    return document


IMPORTS = md(
    "The notebook only calls the package; the logic lives in `duel`. Figures are "
    "drawn inline."
)

# ------------------------------------------------------------------ 01

ENVIRONMENT = [
    md(
        header(
            "The class-imbalanced environment",
            "The paper's learner never sees a curated dataset: it sees an endless "
            "stream in which one class, c_max, is drawn with probability p_max and "
            "every other class shares the rest. This notebook shows what the "
            "two-step sampler hands to training: its class probabilities at each "
            "p_max of the paper's grid, a histogram drawn from the stream, and the "
            "long-tailed profile of ImageNet-LT.",
            [
                "Probability distributions and entropy (in nats).",
                "No deep learning: nothing here trains.",
            ],
            "5 minutes.",
        )
    ),
    md(
        "## Parameters\n\nThe profile decides the dataset the stream draws from; "
        "`p_max`, `batches` and `seed` shape the histogram below."
    ),
    code(
        'profile = "cpu"\np_max = 0.75\nbatches = 50\nseed = 0',
        "parameters",
    ),
    IMPORTS,
    code(
        "%matplotlib inline\n"
        "from duel import book, figures\n"
        "from duel.data import DATASETS, load_dataset"
    ),
    md(
        "## Class probabilities per p_max\n\n"
        "The sampler first draws a class, then an image of that class uniformly "
        "with replacement. Which share of the stream does each class get at each "
        "p_max? The paper printed the share of a non-dominant class in the header "
        "of its Table 1; it stands beside ours."
    ),
    code(
        "config = book.run_config(profile)\n"
        "num_classes = DATASETS[config.dataset].num_classes\n"
        "book.styled(\n"
        "    book.environment_table(num_classes),\n"
        "    f\"The stream at each p_max of the paper's grid, C = {num_classes} "
        'classes",\n'
        ")"
    ),
    md("The same probabilities, one group of bars per class:"),
    code("figures.plot_class_probabilities(num_classes)"),
    md(
        "At p_max = 0.1 with ten classes the stream is balanced. As p_max grows "
        "the other classes shrink together: the dominant class is the only "
        "imbalance this environment has."
    ),
    md(
        "## A histogram drawn from the stream\n\n"
        "Does the sampler produce these shares? We draw `batches` batches from "
        "the profile's training set and look up the labels of the drawn images, "
        "which only this analysis reads."
    ),
    code(
        'train_set = load_dataset(config.dataset, "train", config.data_dir)\n'
        "drawn = book.draw_stream_labels(\n"
        "    train_set.labels, p_max, batches, config.batch_size, seed\n"
        ")\n"
        "figures.plot_stream_histogram(drawn, num_classes, p_max)"
    ),
    md(
        "The title gives the largest gap between the drawn and the target share "
        "of any class; more batches shrink it."
    ),
    md(
        "## The long-tailed profile\n\n"
        "ImageNet-LT has 1280 images in its most frequent class and 5 in its "
        "rarest, a ratio of 256. A long-tailed stream with that ratio makes each "
        "class a constant factor less likely than the one before it. How much of "
        "the stream do the head classes take?"
    ),
    code("figures.plot_long_tail(1000, 256)"),
    md(
        "On a log scale the profile is a straight line. The book's runs use the "
        "dominant-class stream of the paper's Tables 1, 2 and 4; the long-tailed "
        'stream is available to any run as `imbalance="long-tailed"`.'
    ),
    code(
        "import numpy as np\n\n"
        "target = book.environment_table(num_classes)\n"
        "counts = np.bincount(drawn, minlength=num_classes) / len(drawn)\n"
        "book.record_numbers(\n"
        "    {\n"
        '        "num_classes": num_classes,\n'
        '        "draws": len(drawn),\n'
        '        "drawn_dominant_share": float(counts[0]),\n'
        '        "target_dominant_share": p_max,\n'
        '        "stream_entropy": book.stream_entropy(num_classes, p_max),\n'
        "    }\n"
        ")",
        "remove-cell",
    ),
]

# ------------------------------------------------------------------ 02

TRAIN = [
    md(
        header(
            "Train one run",
            "This notebook trains one method on the class-imbalanced stream, or "
            "resumes it from its last checkpoint, and evaluates it. Every page "
            "under *Runs* is this notebook executed by the sweep for one method, "
            "p_max and seed; the values it ran with are in the cell marked "
            "`# Parameters`.",
            [
                "The environment page (how the stream is drawn).",
                "The method page (the DUEL memory and the six methods).",
            ],
            "5 minutes to read. Training takes seconds with the smoke profile and "
            "longer with the others.",
        )
    ),
    md(
        "## Parameters\n\n"
        "Papermill replaces the values of the next cell, for instance "
        "`papermill notebooks/02_train.ipynb out.ipynb -p method d-moco -p p_max "
        "0.75`. `None` leaves a setting at the profile's value."
    ),
    code(
        'method = "d-moco"\n'
        "p_max = 0.75\n"
        "dataset = None\n"
        'profile = "cpu"\n'
        "seed = None\n"
        "steps = None\n"
        "memory_policy = None\n"
        "runs_dir = None\n"
        "device = None\n"
        "num_threads = None",
        "parameters",
    ),
    IMPORTS,
    code(
        "%matplotlib inline\n"
        "from IPython.display import Markdown, display\n\n"
        "from duel import book, figures\n"
        "from duel.data import DATASETS"
    ),
    md(
        "## The configuration\n\n"
        "The profile's defaults with these parameters on top make the run's "
        "configuration. A bad parameter stops here, with one line that names it, "
        "the value received and what is accepted."
    ),
    code(
        "config = book.run_config(\n"
        "    profile,\n"
        "    method=method,\n"
        "    p_max=p_max,\n"
        "    dataset=dataset,\n"
        "    seed=seed,\n"
        "    steps=steps,\n"
        "    memory_policy=memory_policy,\n"
        "    runs_dir=runs_dir,\n"
        "    device=device,\n"
        "    num_threads=num_threads,\n"
        ")\n"
        "book.config_table(config)"
    ),
    md("Where the profile departs from the paper, and why:"),
    code("display(Markdown(book.departures_markdown(config.profile)))"),
    md(
        "## Training\n\n"
        "A finished run of the same configuration is read back; an interrupted "
        "one resumes from its last checkpoint; otherwise training starts from the "
        "seed's initialisation."
    ),
    code("outcome = book.train_or_load(config)\ndisplay(Markdown(outcome.sentence()))"),
    md(
        "## During training\n\n"
        "The training loss, kNN accuracy on a balanced subset of the test set "
        "every few steps and, for a method with a memory, the class entropy of "
        "the memory:"
    ),
    code(
        "num_classes = DATASETS[config.dataset].num_classes\n"
        "figures.plot_run_curves(\n"
        "    book.run_curves(config.run_dir()),\n"
        "    book.run_name(config),\n"
        "    config.p_max,\n"
        "    num_classes,\n"
        ")"
    ),
    md(
        "The title gives kNN accuracy at the first and the last evaluation. In "
        "the memory panel, a DUEL memory should climb above the stream's entropy "
        "(dashed) toward log C (dotted), while a FIFO queue should stay near the "
        "dashed line."
    ),
    md(
        "## Final evaluation\n\n"
        "The frozen backbone is evaluated on the test set with a kNN classifier "
        "and the paper's linear probe, beside the same backbone at its random "
        "initialisation: the floor that training has to beat."
    ),
    code(
        "book.styled(\n"
        "    book.summary_table(outcome.summary),\n"
        '    f"Final evaluation, {book.method_label(book.run_name(config))} at "\n'
        '    f"p_max = {config.p_max:g} ({config.dataset}, {config.backbone} "\n'
        '    f"backbone, {config.steps} steps, seed {config.seed})",\n'
        ")"
    ),
    md("In words:"),
    code("display(Markdown(book.evaluation_sentence(outcome.summary)))"),
    code(
        "summary = outcome.summary\n"
        "book.record_numbers(\n"
        "    {\n"
        '        "status": outcome.status,\n'
        '        "start_step": outcome.start_step,\n'
        '        "steps": summary["steps"],\n'
        '        "linear_probe_accuracy": summary["linear_probe_accuracy"],\n'
        '        "knn_accuracy": summary["knn_accuracy"],\n'
        '        "memory_class_entropy": (summary.get("memory") or {}).get(\n'
        '            "class_entropy"\n'
        "        ),\n"
        '        "run_dir": str(config.run_dir()),\n'
        "    }\n"
        ")",
        "remove-cell",
    ),
]

# ------------------------------------------------------------------ 03

RESULTS = [
    md(
        header(
            "Results: the paper's tables and figures from our runs",
            "This page gathers every finished run of one profile into the paper's "
            "Tables 1, 2 and 4 and Figures 4, 8, 8a, 9 and 10, sets the paper's "
            "known values beside ours, and tests the four claims the book "
            "examines. Every sentence with a number in it is generated from the "
            "runs' files.",
            [
                "The environment and method pages.",
                "Linear probes and kNN evaluation of self-supervised features.",
            ],
            "15 minutes.",
        )
    ),
    md(
        "## Parameters\n\n"
        "The profile and the folder of runs to read; `p_max` is the imbalance at "
        "which Figures 9 and 10, claim 3 and Table 4 are read (the paper's "
        "hardest setting, 0.75)."
    ),
    code('profile = "cpu"\nruns_dir = "runs"\np_max = 0.75', "parameters"),
    IMPORTS,
    code(
        "%matplotlib inline\n"
        "from IPython.display import Markdown, display\n\n"
        "from duel import book, figures, representations"
    ),
    md(
        "## Where the numbers come from\n\n"
        "Every number below is read from the runs' `summary.json`, "
        "`metrics.jsonl` and `memory.jsonl` files:"
    ),
    code(
        "runs = book.load_runs(runs_dir, profile)\n"
        "provenance = book.describe_profile(runs, profile)\n"
        "tag = book.profile_tag(runs, profile)\n"
        "claims = {check.number: check for check in book.check_claims(runs, p_max)}\n"
        "num_classes = book.num_classes_of(runs)\n"
        "display(Markdown(provenance))"
    ),
    md(
        "## Table 1: linear-probe accuracy\n\n"
        "The paper's Table 1 gives linear-probe accuracy (%) for six methods at "
        "four p_max on STL-10 and CIFAR-10. Its numbers were lost from the text "
        "we have, so only its claim can be compared: the DUEL methods lose less "
        "accuracy than their bases as p_max grows."
    ),
    code(
        "book.styled(\n"
        "    book.table1(runs),\n"
        '    f"Table 1, ours: linear-probe accuracy (%), mean ± std over seeds "\n'
        '    f"({tag}).",\n'
        ")"
    ),
    md("Does our grid support the paper's claim?"),
    code("display(Markdown(claims[2].sentence()))"),
    md(
        "The same numbers as a figure, one line per method, error bars one "
        "standard deviation over seeds:"
    ),
    code("figures.plot_linear_probe_vs_p_max(runs)"),
    md(
        "Compare the slope of each DUEL method with its base's: a line that "
        "falls less steeply loses less accuracy to the imbalance. The title "
        "lists each method's change between the lowest and the highest p_max."
    ),
    md(
        "## Table 2: the memory and the geometry of the features\n\n"
        "The paper's Table 2 compares MoCoV2 and D-MoCo at p_max 0.1, 0.5 and "
        "0.75: the class entropy of the memory (higher is better), and the "
        "intra-class variance and inter-class similarity of test features (lower "
        "is better; Eq. 8 and 9 as reconstructed on the method page). Its "
        "numbers were lost as well; ours cover every method and p_max we ran."
    ),
    code(
        "book.styled(\n"
        "    book.table2(runs),\n"
        '    "Table 2, ours: mean ± std over seeds; the stream\'s own class "\n'
        '    f"entropy is given for comparison ({tag}).",\n'
        ")"
    ),
    md("What the data says about claims 1 and 3:"),
    code('display(Markdown(claims[1].sentence() + "\\n\\n" + claims[3].sentence()))'),
    md(
        "## Figures 4 and 8: accuracy during training\n\n"
        "The paper plots accuracy over training checkpoints. Our runs record kNN "
        "accuracy on a balanced test subset every `eval_every` steps:"
    ),
    code("curves = book.load_curves(runs)\nfigures.plot_accuracy_curves(curves)"),
    md(
        "Each panel is one p_max. In the right-most panel, the most imbalanced "
        "stream, compare each DUEL method's line with its base's; the title gives "
        "their final gap."
    ),
    md(
        "## Figure 8a: the memory's class entropy during training\n\n"
        "How far does each memory's class mix move away from the stream's?"
    ),
    code("figures.plot_entropy_curves(curves, num_classes)"),
    md(
        "The dotted line is log C, the entropy of a perfectly balanced memory; "
        "the dashed line is the stream's entropy, which a FIFO queue can only "
        "track. A memory above the dashed line has been rebalanced without "
        "reading a label."
    ),
    md(
        "## Figure 9: per-class geometry\n\n"
        "Which classes does DUEL help? The test features of the MoCoV2 and "
        "D-MoCo runs at p_max give each class's intra-class variance and the "
        "mean similarity of its centroid to the other classes' centroids."
    ),
    code(
        'pair = book.run_dirs(runs, ["moco", "d-moco"], p_max)\n'
        "per_class = representations.per_class_geometry(pair)\n"
        "figures.plot_per_class_geometry(per_class, p_max)"
    ),
    md(
        "Class 0 is the dominant class. Bars are means over seeds. The title "
        "counts the classes whose centroid D-MoCo keeps further from the others "
        "than MoCoV2 does."
    ),
    md(
        "## Figure 10: class frequencies in the memory over time\n\n"
        "The memory's classes sorted from the most to the least frequent, at "
        "several steps of the MoCoV2 and D-MoCo runs:"
    ),
    code(
        'snapshots = book.memory_snapshots(runs, ["moco", "d-moco"], p_max)\n'
        "figures.plot_memory_frequencies(snapshots, num_classes)"
    ),
    md(
        "A memory in perfect balance would lie on the dotted line. Rank 1 is the "
        "dominant class: compare how far it sits above the others in the FIFO "
        "queue and in the DUEL memory, and how that gap changes over the steps "
        "(darker is earlier)."
    ),
    md(
        "## Table 4: D-SimCLR's negatives\n\n"
        "The ablation notebook trains D-SimCLR with four settings of its "
        "negatives; their finished runs are read here."
    ),
    code(
        "book.styled(\n"
        "    book.table4(runs, p_max),\n"
        '    f"Table 4, ours: D-SimCLR at p_max = {p_max:g}, mean ± std over "\n'
        '    f"seeds ({tag}).",\n'
        ")"
    ),
    md("The paper's claim about this table, against our runs:"),
    code("display(Markdown(claims[4].sentence()))"),
    md(
        "## The cost of DUEL\n\n"
        "The paper's Appendix D reports training time and GPU memory on one "
        "RTX 3090 Ti for 160k CIFAR-10 steps. Our times are seconds per run of "
        "this profile on whatever machine trained it, so only the relative "
        "overheads compare; GPU memory is not measured."
    ),
    code(
        "book.styled(\n"
        "    book.cost_table(runs),\n"
        '    "Appendix D as printed in the paper, beside our training time per "\n'
        '    f"run (mean over all runs of the method; {tag}).",\n'
        ")"
    ),
    md(
        "## Table 5: the paper's values only\n\n"
        "The paper also pre-trains on ImageNet-LT and probes on three datasets. "
        "ImageNet-LT is not part of this book's profiles, so these are the "
        "paper's numbers, not measured here:"
    ),
    code(
        "book.styled(\n"
        "    book.PAPER_TABLE5,\n"
        '    "Table 5 as printed in the paper: linear-probe accuracy (%) after "\n'
        '    "ImageNet-LT pre-training. Not measured in this book.",\n'
        ")"
    ),
    md(
        "## The claims\n\n"
        "Each of the four claims the book tests, with the verdict and the "
        "sentence the data gives:"
    ),
    code("display(Markdown(book.claims_markdown(claims.values())))"),
    code(
        "book.record_numbers(\n"
        "    {\n"
        '        "runs": len(runs),\n'
        '        "verdicts": {str(n): c.verdict for n, c in claims.items()},\n'
        '        "table1": book.table1_means(runs),\n'
        "    }\n"
        ")",
        "remove-cell",
    ),
]

# ------------------------------------------------------------------ 04

TSNE = [
    md(
        header(
            "The memory in the representation space (Figure 5)",
            "Where in the learned representation do the memory's items sit? This "
            "notebook draws a t-SNE map of the test features of a trained MoCoV2 "
            "(FIFO queue) and D-MoCo (DUEL memory), highlights the memory's items, "
            "and places the memory of several training steps into the same map.",
            [
                "The results page (Figure 10 shows the same memories as class counts).",
                "t-SNE maps: distances are only meaningful locally.",
            ],
            "10 minutes.",
        )
    ),
    md(
        "## Parameters\n\n"
        "The runs to map (profile, p_max, seed, steps), how many memory "
        "snapshots to place and how many test points to fit the map on."
    ),
    code(
        'profile = "cpu"\n'
        'runs_dir = "runs"\n'
        "p_max = 0.75\n"
        "seed = 0\n"
        "steps = None\n"
        "frames = 4\n"
        "max_points = 2000",
        "parameters",
    ),
    IMPORTS,
    code(
        "%matplotlib inline\n"
        "from IPython.display import Markdown, display\n\n"
        "from duel import book, representations"
    ),
    md(
        "## The two runs\n\n"
        "The map needs a trained MoCoV2 and D-MoCo at p_max. The sweep has "
        "usually trained them and they are read back; otherwise they are trained "
        "here."
    ),
    code(
        "outcomes = {\n"
        "    method: book.train_or_load(\n"
        "        book.run_config(\n"
        "            profile,\n"
        "            method=method,\n"
        "            p_max=p_max,\n"
        "            seed=seed,\n"
        "            steps=steps,\n"
        "            runs_dir=runs_dir,\n"
        "        )\n"
        "    )\n"
        '    for method in ("moco", "d-moco")\n'
        "}\n"
        "display(Markdown(book.outcomes_sentence(list(outcomes.values()))))"
    ),
    md(
        "## Figure 5: the memory among the test features\n\n"
        "openTSNE fits a map on up to `max_points` test features of each run. "
        "The memory's items are training images (by dataset index): the same "
        "final encoder encodes them, and `TSNEEmbedding.transform` places them "
        "into the run's map."
    ),
    code(
        "maps = [\n"
        "    representations.memory_map(\n"
        "        outcome.config.run_dir(),\n"
        "        frames=frames,\n"
        "        max_points=max_points,\n"
        "        seed=seed,\n"
        "    )\n"
        "    for outcome in outcomes.values()\n"
        "]\n"
        "representations.plot_memory_maps(maps)"
    ),
    md(
        "Dots are test images coloured by class (labels for display only); "
        "outlined points are the final memory's items. Look for the FIFO queue's "
        "items piling up where class 0, the dominant class, lies, and for the "
        "DUEL memory's items spreading over the other classes."
    ),
    md(
        "## The memory over training\n\n"
        "The memory's items at several steps, from `memory.jsonl`, re-encoded by "
        "the final encoder and placed into the same maps. They show where the "
        "final encoder puts those images, not where the encoder of that step did."
    ),
    code("representations.plot_memory_frames(maps)"),
    md(
        "Read each row from left to right; each panel's title gives the memory's "
        "class entropy at that step."
    ),
    md(
        "## Explore it\n\n"
        "In Jupyter, the widget below picks a run and a snapshot and moves a "
        "pointer over the map; the images of the memory's items nearest to the "
        "pointer appear beside it. The built book shows the static frames above "
        "instead."
    ),
    code("representations.memory_explorer(maps)", "remove-output"),
    code(
        "book.record_numbers(\n"
        "    {\n"
        '        "frames": {m.method: len(m.frames) for m in maps},\n'
        '        "points": {m.method: len(m.points) for m in maps},\n'
        '        "final_memory_entropy": {\n'
        '            m: o.summary["memory"]["class_entropy"]\n'
        "            for m, o in outcomes.items()\n"
        "        },\n"
        "    }\n"
        ")",
        "remove-cell",
    ),
]

# ------------------------------------------------------------------ 05

ABLATION = [
    md(
        header(
            "Ablation: D-SimCLR's negatives (Table 4)",
            "D-SimCLR adds negatives drawn from its DUEL memory of images to "
            "SimCLR's in-batch negatives. The paper's Table 4 asks which "
            "negatives help and whether the positive belongs in the InfoNCE "
            "denominator (eps, Appendix E). This notebook trains the four settings "
            "at one p_max and tabulates them.",
            [
                "The method page: D-SimCLR and the general InfoNCE with eps "
                "(reconstructed).",
            ],
            "5 minutes to read; four training runs per seed.",
        )
    ),
    md(
        "## Parameters\n\n"
        "The profile, the folder of runs, the imbalance of the stream and the "
        "seeds; `steps` overrides the profile's (None keeps it)."
    ),
    code(
        'profile = "cpu"\nruns_dir = "runs"\np_max = 0.75\nseeds = [0]\nsteps = None',
        "parameters",
    ),
    IMPORTS,
    code(
        "%matplotlib inline\n"
        "from IPython.display import Markdown, display\n\n"
        "from duel import book, figures"
    ),
    md(
        "## The four settings\n\n"
        "Negatives from the batch only with eps = 1 (which is SimCLR), from the "
        "memory only with eps = 0, mixed with eps = 0, and mixed with eps = 1, "
        "the default D-SimCLR. Runs that finished before are read back:"
    ),
    code(
        "configs = book.ablation_configs(profile, p_max, seeds, steps, runs_dir)\n"
        "outcomes = [book.train_or_load(config) for config in configs]\n"
        "display(Markdown(book.outcomes_sentence(outcomes)))"
    ),
    md("## Table 4\n\nThe finished runs of the four settings, side by side:"),
    code(
        "runs = book.load_runs(runs_dir, profile)\n"
        "book.styled(\n"
        "    book.table4(runs, p_max),\n"
        '    f"Table 4, ours: D-SimCLR at p_max = {p_max:g}, mean ± std over "\n'
        '    f"seeds ({book.profile_tag(runs, profile)}).",\n'
        ")"
    ),
    md(
        "The paper's numbers for this table were lost; its claim is that mixed "
        "negatives with eps = 1 is the best setting. What our runs say:"
    ),
    code(
        "claim = book.check_claims(runs, p_max)[3]\ndisplay(Markdown(claim.sentence()))"
    ),
    md("The linear-probe accuracy of each setting as a figure:"),
    code("figures.plot_ablation(runs, p_max)"),
    md(
        "Bars are the mean over seeds with one standard deviation; the title "
        "names the best setting. Compare the two mixed settings to see what the "
        "positive in the denominator (eps) changes."
    ),
    code(
        "book.record_numbers(\n"
        "    {\n"
        '        "settings": len(book.table4(runs, p_max)),\n'
        '        "verdict": claim.verdict,\n'
        '        "statuses": [outcome.status for outcome in outcomes],\n'
        "    }\n"
        ")",
        "remove-cell",
    ),
]

NOTEBOOKS = {
    "01_environment": ENVIRONMENT,
    "02_train": TRAIN,
    "03_results": RESULTS,
    "04_memory_tsne": TSNE,
    "05_ablation_negatives": ABLATION,
}


def build_all() -> dict[str, str]:
    """Every notebook's JSON text, by name."""
    return {
        name: nbformat.writes(notebook(name, cells))
        for name, cells in NOTEBOOKS.items()
    }


def main() -> int:
    for name, text in build_all().items():
        (HERE / f"{name}.ipynb").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
