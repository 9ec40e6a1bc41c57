#!/usr/bin/python3
"""Does the model choose among objects of one category? From `loupe eval`'s
per-expression output (--out) and the split's annotations:

  - per expression kind, Acc@0.5 by how many objects of the target's category
    the scene holds (1, 2, 3, 4+): with 2+ a colour/ordinal/size word has to
    pick one, and chance is 1/n;
  - for each kind, over pairs of expressions about one image and one
    category with different targets: how many get the identical answer
    (a model that ignores the word answers both the same).

  /usr/bin/python3 tools/train/same_category.py RESULTS.jsonl /tmp/heldval/annotations.json
"""
import collections
import json
import sys


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    rows = [json.loads(line) for line in open(sys.argv[1])]
    with open(sys.argv[2]) as f:
        ann = json.load(f)
    image_of = {im["file_name"]: im["id"] for im in ann["images"]}
    cats = {c["id"]: c["name"] for c in ann["categories"]}
    count = collections.Counter((a["image_id"], cats[a["category_id"]]) for a in ann["annotations"])
    acc = collections.defaultdict(lambda: [0, 0])         # (kind, n same-category bucket) -> hits, total
    groups = collections.defaultdict(list)                # (kind, image, category) -> rows
    for r in rows:
        n = count[(image_of[r["image"]], r["category"])]
        a = acc[(r["kind"], min(n, 4))]
        a[0] += bool(r["correct"])
        a[1] += 1
        groups[(r["kind"], r["image"], r["category"])].append(r)
    kinds = sorted({k for k, _ in acc})
    print("%-9s %16s %16s %16s %16s   pairs with different targets: same answer" %
          ("kind", "1 of category", "2", "3", "4+"))
    for k in kinds:
        same = diff = 0
        for (kk, _, _), rs in groups.items():
            if kk != k:
                continue
            for i in range(len(rs)):
                for j in range(i + 1, len(rs)):
                    if rs[i]["gt"] != rs[j]["gt"]:
                        same += rs[i]["answer"] == rs[j]["answer"]
                        diff += rs[i]["answer"] != rs[j]["answer"]
        cells = []
        for n in (1, 2, 3, 4):
            h, t = acc[(k, n)]
            cells.append("%5.1f%% (%4d)" % (100.0 * h / t, t) if t else "%16s" % "-")
        print("%-9s %16s %16s %16s %16s   %d of %d" % (k, *cells, same, same + diff))


if __name__ == "__main__":
    main()
