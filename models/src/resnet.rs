//! CIFAR-style ResNets: 3x3 stem (stride 1, no max-pool), four stages of
//! BasicBlocks (channels `w, 2w, 4w, 8w`, stride 2 from the second stage on),
//! 1x1 convolution + BatchNorm shortcuts where the shape changes, global
//! average pooling and a linear classifier. `blocks = [2, 2, 2, 2]` with
//! `width = 64` is the ResNet-18 of the reference work.

use qmul_runtime::graph::{Graph, GraphError, Op, Precision, QuantScheme};

/// What to build.
#[derive(Clone, Debug)]
pub struct ResNetConfig {
    /// BasicBlocks per stage.
    pub blocks: [usize; 4],
    /// Channels of the first stage (64 = the paper's network).
    pub width: usize,
    pub in_h: usize,
    pub in_w: usize,
    /// 1 (grey) or 3 (RGB) input channels.
    pub in_c: usize,
    pub classes: usize,
    pub scheme: QuantScheme,
    /// Precision of the stem conv and the classifier (8-bit by default).
    pub edge_precision: Precision,
}

impl ResNetConfig {
    /// ResNet-18 for `in_h x in_w x in_c` images and `classes` classes.
    pub fn resnet18(
        width: usize,
        in_h: usize,
        in_w: usize,
        in_c: usize,
        classes: usize,
        scheme: QuantScheme,
    ) -> Self {
        ResNetConfig {
            blocks: [2, 2, 2, 2],
            width,
            in_h,
            in_w,
            in_c,
            classes,
            scheme,
            edge_precision: Precision::Int8,
        }
    }

    /// Architecture name for the model card: `resnet18` for [2,2,2,2], else the block counts.
    pub fn arch_name(&self) -> String {
        match self.blocks {
            [2, 2, 2, 2] => "resnet18".into(),
            [1, 1, 1, 1] => "resnet10".into(),
            b => format!("resnet[{},{},{},{}]", b[0], b[1], b[2], b[3]),
        }
    }
}

struct Builder {
    nodes: Vec<Op>,
    body: Precision,
}

impl Builder {
    fn push(&mut self, op: Op) -> usize {
        self.nodes.push(op);
        self.nodes.len() - 1
    }

    fn conv(
        &mut self,
        name: &str,
        input: usize,
        cout: usize,
        k: usize,
        stride: usize,
        prec: Precision,
    ) -> usize {
        self.push(Op::Conv {
            name: format!("{name}.conv"),
            input,
            cout,
            k,
            stride,
            pad: k / 2,
            prec,
        })
    }

    fn bn(&mut self, name: &str, input: usize) -> usize {
        self.push(Op::BatchNorm {
            name: format!("{name}.bn"),
            input,
        })
    }

    fn act(&mut self, name: &str, input: usize) -> usize {
        self.push(Op::Act {
            name: format!("{name}.act"),
            input,
        })
    }

    /// BasicBlock: conv3x3-BN-act-conv3x3-BN (+ shortcut) - act.
    fn block(&mut self, name: &str, x: usize, cin: usize, cout: usize, stride: usize) -> usize {
        let c1 = self.conv(&format!("{name}.1"), x, cout, 3, stride, self.body);
        let b1 = self.bn(&format!("{name}.1"), c1);
        let a1 = self.act(&format!("{name}.1"), b1);
        let c2 = self.conv(&format!("{name}.2"), a1, cout, 3, 1, self.body);
        let b2 = self.bn(&format!("{name}.2"), c2);
        let short = if stride != 1 || cin != cout {
            let cs = self.conv(&format!("{name}.down"), x, cout, 1, stride, self.body);
            self.bn(&format!("{name}.down"), cs)
        } else {
            x
        };
        let sum = self.push(Op::Add { a: b2, b: short });
        self.act(&format!("{name}.out"), sum)
    }
}

/// Builds and validates the graph.
pub fn resnet(cfg: &ResNetConfig) -> Result<Graph, GraphError> {
    if cfg.width == 0 || cfg.classes < 2 || !(cfg.in_c == 1 || cfg.in_c == 3) {
        return Err(GraphError(
            "width >= 1, classes >= 2 and 1 or 3 input channels required".into(),
        ));
    }
    let quantized = cfg.scheme != QuantScheme::None;
    let body = if quantized {
        Precision::Int4
    } else {
        Precision::F32
    };
    let edge = if quantized {
        cfg.edge_precision
    } else {
        Precision::F32
    };
    let mut b = Builder {
        nodes: Vec::new(),
        body,
    };
    let x = b.push(Op::Input {
        h: cfg.in_h,
        w: cfg.in_w,
        c: cfg.in_c,
    });
    let stem = b.conv("stem", x, cfg.width, 3, 1, edge);
    let stem = b.bn("stem", stem);
    let mut x = b.act("stem", stem);
    let mut cin = cfg.width;
    for (s, &nb) in cfg.blocks.iter().enumerate() {
        let cout = cfg.width << s;
        for j in 0..nb {
            let stride = if s > 0 && j == 0 { 2 } else { 1 };
            x = b.block(&format!("layer{}.{}", s + 1, j), x, cin, cout, stride);
            cin = cout;
        }
    }
    let p = b.push(Op::GlobalAvgPool { input: x });
    b.push(Op::Linear {
        name: "fc".into(),
        input: p,
        out: cfg.classes,
        prec: edge,
    });
    let g = Graph {
        nodes: b.nodes,
        scheme: cfg.scheme,
        classes: cfg.classes,
    };
    g.shapes()?;
    Ok(g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resnet18_shapes_and_size() {
        let cfg = ResNetConfig::resnet18(64, 32, 32, 3, 100, QuantScheme::Pact);
        let g = resnet(&cfg).unwrap();
        let shapes = g.shapes().unwrap();
        let convs = g
            .nodes
            .iter()
            .filter(|o| matches!(o, Op::Conv { .. }))
            .count();
        assert_eq!(
            convs,
            1 + 16 + 3,
            "stem, 16 block convs, 3 downsample shortcuts"
        );
        let m = qmul_runtime::Model::layout(g).unwrap();
        // torchvision-CIFAR ResNet-18 (3x3 stem, 100 classes) has 11,220,132 parameters.
        let weights: usize = m
            .params
            .iter()
            .filter(|t| !t.name.ends_with(".wq") && !t.name.ends_with(".q"))
            .map(|t| t.data.len())
            .sum();
        assert_eq!(weights, 11_220_132);
        assert_eq!(shapes.last().unwrap().c, 100);
    }
}
