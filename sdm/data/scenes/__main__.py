"""`python -m sdm.data.scenes --num 16 --size 256 --out DIR`: a grid PNG of scenes."""

from sdm.data.scenes.sets import main

main()
