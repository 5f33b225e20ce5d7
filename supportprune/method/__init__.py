"""The method of Huang, Kong and Lucey (2017), as pure functions over modules and tensors, in the order it runs:
``support`` (η*, Eq. 9, and the support sites that replace ReLU; ``convert`` puts them in a model, and back to
plain ReLU for export), ``alternation`` (I-alternation, Eq. 36–38), ``criteria`` (what decides the keep masks:
supports under B-alternation, Eq. 39–41, or another importance), ``allocation`` (how many channels each layer
keeps), ``pruning`` (the physical cut), ``dsd`` (the Dense → Sparse → re-Dense steps) and ``distill`` (the Dense
model as a teacher). No files, and nothing of the other floors imported; its registries (criteria, support
statistics, alternations, granularities) name what a recipe accepts."""
