//! Parameter counts per model (against the PyTorch references), stable layer names, deterministic
//! initialisation, and ResNet-18 forward/backward on CPU with a tiny batch.

use lth_sweep::{ModelKind, PrunePolicy};
use lth_worker::engine::bench::{run as bench, BenchConfig};
use lth_worker::engine::{configure_threads, prunable_layers, InputShape, Network};
use tch::{Device, Kind, Tensor};

const CIFAR: InputShape = InputShape { channels: 3, height: 32, width: 32 };

#[test]
fn parameter_counts_match_the_reference_implementations() {
    configure_threads(Some(1));
    // torchvision resnet18 with conv1 = 3×3/1 and no max-pool, 10 classes
    assert_eq!(Network::new(ModelKind::Resnet18, CIFAR, 10, Device::Cpu, 0).unwrap().parameter_count(), 11_173_962);
    // torchvision resnet18 (11,689,512 at 1000 classes) with a 200-class head
    let tiny = InputShape { channels: 3, height: 64, width: 64 };
    assert_eq!(Network::new(ModelKind::Resnet18Imagenet, tiny, 200, Device::Cpu, 0).unwrap().parameter_count(), 11_279_112);
    // open_lth cifar_resnet_20 (1×1-conv shortcuts)
    assert_eq!(Network::new(ModelKind::Resnet20, CIFAR, 10, Device::Cpu, 0).unwrap().parameter_count(), 272_474);
    // open_lth cifar_vgg_16 (conv biases + BN, one linear layer)
    assert_eq!(Network::new(ModelKind::Vgg16, CIFAR, 10, Device::Cpu, 0).unwrap().parameter_count(), 14_728_266);
    // LeNet-300-100 on 28×28 MNIST and on the 8×8 digits
    let mnist = InputShape { channels: 1, height: 28, width: 28 };
    assert_eq!(Network::new(ModelKind::Lenet300100, mnist, 10, Device::Cpu, 0).unwrap().parameter_count(), 266_610);
    let digits = InputShape { channels: 1, height: 8, width: 8 };
    assert_eq!(Network::new(ModelKind::Lenet300100, digits, 10, Device::Cpu, 0).unwrap().parameter_count(), 50_610);
}

#[test]
fn layer_names_are_stable_and_prunable_layers_follow_the_policy() {
    let net = Network::new(ModelKind::Resnet18, CIFAR, 10, Device::Cpu, 0).unwrap();
    let names: Vec<String> = prunable_layers(&net, &PrunePolicy::default()).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names.len(), 21, "20 convs (17 3×3 + 3 downsample) + fc: {names:?}");
    for n in ["conv1.weight", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight", "layer4.1.conv2.weight", "fc.weight"] {
        assert!(names.contains(&n.to_string()), "{n} missing from {names:?}");
    }
    assert!(names.iter().all(|n| !n.contains("bn") && !n.ends_with("bias") && !n.contains("downsample.1")));
    let no_fc = PrunePolicy { exclude_layers: vec!["fc.weight".into()], prune_convs: true, ..Default::default() };
    assert_eq!(prunable_layers(&net, &no_fc).len(), 20);
    let linears_only = PrunePolicy { prune_convs: false, ..Default::default() };
    assert_eq!(prunable_layers(&net, &linears_only).len(), 1);
    let vgg = Network::new(ModelKind::Vgg16, CIFAR, 10, Device::Cpu, 0).unwrap();
    let v: Vec<String> = vgg.named_variables().into_iter().map(|(n, _)| n).collect();
    assert!(v.contains(&"layers.0.conv.weight".to_string()) && v.contains(&"layers.16.bn.running_var".to_string()), "{v:?}");
    let r20 = Network::new(ModelKind::Resnet20, CIFAR, 10, Device::Cpu, 0).unwrap();
    let v: Vec<String> = r20.named_variables().into_iter().map(|(n, _)| n).collect();
    assert!(v.contains(&"blocks.3.shortcut.0.weight".to_string()) && v.contains(&"conv.weight".to_string()), "{v:?}");
}

#[test]
fn initialisation_is_kaiming_normal_and_deterministic() {
    let a = Network::new(ModelKind::Resnet20, CIFAR, 10, Device::Cpu, 5).unwrap();
    let b = Network::new(ModelKind::Resnet20, CIFAR, 10, Device::Cpu, 5).unwrap();
    let c = Network::new(ModelKind::Resnet20, CIFAR, 10, Device::Cpu, 6).unwrap();
    let (va, vb, vc) = (a.vs.variables(), b.vs.variables(), c.vs.variables());
    for (n, t) in &va {
        assert!(t.equal(&vb[n]), "{n} differs for the same seed");
    }
    assert!(!va["blocks.8.conv2.weight"].equal(&vc["blocks.8.conv2.weight"]));
    // std = sqrt(2 / fan_in), fan_in = 64 · 3 · 3
    let w = &va["blocks.8.conv2.weight"];
    let std = w.std(true).double_value(&[]);
    assert!((std - (2.0f64 / 576.0).sqrt()).abs() < 0.003, "{std}");
    assert_eq!(va["bn.weight"].sum(Kind::Double).double_value(&[]), 16.0);
    assert_eq!(va["fc.bias"].abs().sum(Kind::Double).double_value(&[]), 0.0);
}

#[test]
fn cifar_resnet18_forward_backward_on_cpu() {
    configure_threads(Some(1));
    let net = Network::new(ModelKind::Resnet18, CIFAR, 10, Device::Cpu, 0).unwrap();
    let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
    let y = Tensor::from_slice(&[3i64, 7]);
    let out = net.forward_t(&x, true);
    assert_eq!(out.size(), vec![2, 10]);
    let loss = out.cross_entropy_for_logits(&y);
    loss.backward();
    let g = net.vs.variables()["conv1.weight"].grad();
    assert!(g.defined() && g.abs().sum(Kind::Double).double_value(&[]) > 0.0);
    // The whole training path (gather, crop, flip, SGD, mask multiply, evaluation) at batch 2.
    let r = bench(&BenchConfig {
        model: ModelKind::Resnet18,
        batch: 2,
        precision: lth_sweep::Precision::Fp32,
        device: Device::Cpu,
        warmup_steps: 0,
        steps: 1,
        epoch_images: 4,
        test_images: 2,
        step_impl: lth_worker::engine::train::StepImpl::Fused,
        bundle: 0,
        // Asked for, but a CPU step never runs as a CUDA graph.
        graph: true,
    })
    .unwrap();
    assert!(r.step_images_per_second > 0.0 && r.epoch_seconds.unwrap() > 0.0);
    assert_eq!(r.step, "fused");
    assert!(!r.graph);
}

#[test]
fn every_model_trains_one_step_on_cpu() {
    configure_threads(Some(1));
    for (kind, shape, classes) in [
        (ModelKind::Resnet20, CIFAR, 10),
        (ModelKind::Vgg16, CIFAR, 10),
        (ModelKind::Resnet18Imagenet, InputShape { channels: 3, height: 64, width: 64 }, 200),
        (ModelKind::Lenet300100, InputShape { channels: 1, height: 28, width: 28 }, 10),
    ] {
        let net = Network::new(kind, shape, classes, Device::Cpu, 0).unwrap();
        let x = Tensor::randn([2, shape.channels, shape.height, shape.width], (Kind::Float, Device::Cpu));
        let out = net.forward_t(&x, true);
        assert_eq!(out.size(), vec![2, classes], "{kind:?}");
        out.cross_entropy_for_logits(&Tensor::from_slice(&[0i64, 1])).backward();
    }
}

/// The expected network order of every built-in model, written out independently of the model
/// code: PyTorch's state_dict order (modules as registered, weight, bias, running stats).
fn expected_order(kind: ModelKind) -> Vec<String> {
    let conv_bn = |out: &mut Vec<String>, conv: &str, bn: &str, conv_bias: bool| {
        out.push(format!("{conv}.weight"));
        if conv_bias {
            out.push(format!("{conv}.bias"));
        }
        for leaf in ["weight", "bias", "running_mean", "running_var"] {
            out.push(format!("{bn}.{leaf}"));
        }
    };
    let fc = |out: &mut Vec<String>, name: &str| {
        out.push(format!("{name}.weight"));
        out.push(format!("{name}.bias"));
    };
    let mut v = Vec::new();
    match kind {
        ModelKind::Resnet18 | ModelKind::Resnet18Imagenet => {
            conv_bn(&mut v, "conv1", "bn1", false);
            for (stage, down) in [(1, false), (2, true), (3, true), (4, true)] {
                for b in 0..2 {
                    let p = format!("layer{stage}.{b}");
                    conv_bn(&mut v, &format!("{p}.conv1"), &format!("{p}.bn1"), false);
                    conv_bn(&mut v, &format!("{p}.conv2"), &format!("{p}.bn2"), false);
                    if down && b == 0 {
                        conv_bn(&mut v, &format!("{p}.downsample.0"), &format!("{p}.downsample.1"), false);
                    }
                }
            }
            fc(&mut v, "fc");
        }
        ModelKind::Resnet20 => {
            conv_bn(&mut v, "conv", "bn", false);
            for b in 0..9 {
                let p = format!("blocks.{b}");
                conv_bn(&mut v, &format!("{p}.conv1"), &format!("{p}.bn1"), false);
                conv_bn(&mut v, &format!("{p}.conv2"), &format!("{p}.bn2"), false);
                if b == 3 || b == 6 {
                    conv_bn(&mut v, &format!("{p}.shortcut.0"), &format!("{p}.shortcut.1"), false);
                }
            }
            fc(&mut v, "fc");
        }
        ModelKind::Vgg16 => {
            for i in [0, 1, 3, 4, 6, 7, 8, 10, 11, 12, 14, 15, 16] {
                conv_bn(&mut v, &format!("layers.{i}.conv"), &format!("layers.{i}.bn"), true);
            }
            fc(&mut v, "fc");
        }
        ModelKind::Lenet300100 => {
            fc(&mut v, "fc_layers.0");
            fc(&mut v, "fc_layers.1");
            fc(&mut v, "fc");
        }
    }
    v
}

#[test]
fn every_model_lists_its_layers_in_network_order() {
    for kind in ModelKind::ALL {
        let shape = match kind {
            ModelKind::Lenet300100 => InputShape { channels: 1, height: 8, width: 8 },
            ModelKind::Resnet18Imagenet => InputShape { channels: 3, height: 64, width: 64 },
            _ => CIFAR,
        };
        let net = Network::new(kind, shape, 10, Device::Cpu, 0).unwrap();
        let names: Vec<String> = net.named_variables().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, expected_order(kind), "{kind:?}");
        assert_eq!(names.len(), net.vs.variables().len(), "{kind:?}: every variable has its place");
        let prunable: Vec<String> = prunable_layers(&net, &PrunePolicy::default()).into_iter().map(|(n, _)| n).collect();
        let expected: Vec<String> = expected_order(kind)
            .into_iter()
            .filter(|n| n.ends_with(".weight") && !n.contains("bn") && !n.contains("downsample.1") && !n.contains("shortcut.1"))
            .collect();
        assert_eq!(prunable, expected, "{kind:?}");
        assert_eq!(prunable.last().map(String::as_str), Some("fc.weight"), "{kind:?}: the classifier comes last");
    }
    // The cases that name order got wrong.
    let vgg = Network::new(ModelKind::Vgg16, CIFAR, 10, Device::Cpu, 0).unwrap();
    let p: Vec<String> = prunable_layers(&vgg, &PrunePolicy::default()).into_iter().map(|(n, _)| n).collect();
    assert!(p.iter().position(|n| n == "layers.3.conv.weight") < p.iter().position(|n| n == "layers.10.conv.weight"));
    // Patterns replace the model's own choice; exclude_layers still wins.
    let only = PrunePolicy { layers: vec!["layers.1?.conv.weight".into()], exclude_layers: vec!["layers.16.conv.weight".into()], ..Default::default() };
    let p: Vec<String> = prunable_layers(&vgg, &only).into_iter().map(|(n, _)| n).collect();
    assert_eq!(p, ["layers.10.conv.weight", "layers.11.conv.weight", "layers.12.conv.weight", "layers.14.conv.weight", "layers.15.conv.weight"]);
}

#[test]
fn dead_classes_of_a_lenet_mask_counted_by_hand() {
    use lth_worker::engine::{classifier_name, layer_report, LayerMask};
    let digits = InputShape { channels: 1, height: 8, width: 8 };
    let net = Network::new(ModelKind::Lenet300100, digits, 10, Device::Cpu, 0).unwrap();
    assert_eq!(classifier_name(&net, 10).as_deref(), Some("fc.weight"));
    assert_eq!(classifier_name(&net, 7), None, "fc has 10 outputs, not 7");
    // fc.weight is 10 × 100: prune classes 3 and 7 entirely, and input 42 in every class.
    let keep: Vec<bool> = (0..1000).map(|i| { let (class, input) = (i / 100, i % 100); class != 3 && class != 7 && input != 42 }).collect();
    let r = layer_report(&LayerMask::from_bools("fc.weight", &[10, 100], &keep), 1.0, true);
    let u = r.units.unwrap();
    assert_eq!((u.outputs, u.dead_outputs, u.inputs, u.dead_inputs, u.output_layer), (10, 2, 100, 1, true));
    assert_eq!(r.kept, 8 * 99);
    // The hidden layer fc_layers.1 (100 × 300) with nothing pruned has no dead units.
    let u = layer_report(&LayerMask::ones("fc_layers.1.weight", &[100, 300]), 1.0, false).units.unwrap();
    assert_eq!((u.outputs, u.dead_outputs, u.inputs, u.dead_inputs, u.output_layer), (100, 0, 300, 0, false));
}
